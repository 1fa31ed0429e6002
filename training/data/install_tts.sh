#!/bin/sh
# Installs the Debian packages the data scripts need: TTS engines and voices (training voices:
# espeak-ng, mbrola us1/us2/us3/en1, flite, festival kal/ked/rab; held-out voices: pico, RHVoice
# English, festival/flite SLT), sox, and the Fashion-MNIST data set.
# mbrola, pico, RHVoice and festvox-rablpc16k are in contrib/non-free: a sources entry for
# `bookworm bookworm-updates` with those components is added when missing. Needs root.
set -eu
SRC=/etc/apt/sources.list.d/contrib-nonfree.sources
if ! grep -rqs "non-free" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    cat > "$SRC" <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    apt-get -o DPkg::Lock::Timeout=600 update
fi
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends \
    dataset-fashion-mnist sox \
    espeak-ng mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 \
    flite festival festvox-kallpc16k festvox-kdlpc16k festvox-rablpc16k festvox-us-slt-hts \
    libttspico-utils rhvoice rhvoice-english
