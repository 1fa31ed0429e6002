"""The 31 Fluent-Speech-Commands-style intents and their natural phrasings.

Intent = (action, object, location). Label strings are ``action|object|location`` with ``none``
for a missing slot, in a fixed order (the model's logit order). Every intent has several
phrasings; the same phrase list is used for every voice (as in FSC's speaker split: the test
set differs from training by *speaker*, not by wording).
"""

LOCATIONS = ["none", "kitchen", "bedroom", "washroom"]
LANGUAGES = ["chinese", "korean", "english", "german"]


def _loc_variants(loc, templates_loc, templates_none):
    """Phrases with ``{L}`` replaced by the location; location-free phrases for ``none``."""
    if loc == "none":
        return list(templates_none)
    return [t.format(L=loc) for t in templates_loc]


LIGHTS_ON_LOC = [
    "turn on the lights in the {L}",
    "switch on the {L} lights",
    "{L} lights on",
    "lights on in the {L}",
    "turn the {L} lights on",
    "switch the lights on in the {L}",
    "put the lights on in the {L}",
    "turn on the {L} lights please",
]
LIGHTS_ON = [
    "turn on the lights",
    "switch on the lights",
    "lights on",
    "turn the lights on",
    "switch the lights on",
    "put the lights on",
    "turn on the lights please",
]
LIGHTS_OFF_LOC = [
    "turn off the lights in the {L}",
    "switch off the {L} lights",
    "{L} lights off",
    "lights off in the {L}",
    "turn the {L} lights off",
    "switch the lights off in the {L}",
    "turn off the {L} lights please",
]
LIGHTS_OFF = [
    "turn off the lights",
    "switch off the lights",
    "lights off",
    "turn the lights off",
    "switch the lights off",
    "turn off the lights please",
]
HEAT_UP_LOC = [
    "turn up the heat in the {L}",
    "increase the heating in the {L}",
    "heat up the {L}",
    "make the {L} warmer",
    "{L} heat up",
    "increase the temperature in the {L}",
    "turn the heating up in the {L}",
]
HEAT_UP = [
    "turn up the heat",
    "increase the heating",
    "heat up",
    "make it warmer",
    "increase the temperature",
    "turn the heating up",
]
HEAT_DOWN_LOC = [
    "turn down the heat in the {L}",
    "decrease the heating in the {L}",
    "make the {L} cooler",
    "{L} heat down",
    "decrease the temperature in the {L}",
    "turn the heating down in the {L}",
    "lower the heat in the {L}",
]
HEAT_DOWN = [
    "turn down the heat",
    "decrease the heating",
    "make it cooler",
    "heat down",
    "decrease the temperature",
    "turn the heating down",
]
VOLUME_UP = [
    "increase the volume",
    "turn up the volume",
    "volume up",
    "louder please",
    "make it louder",
    "turn the volume up",
]
VOLUME_DOWN = [
    "decrease the volume",
    "turn down the volume",
    "volume down",
    "quieter please",
    "make it quieter",
    "turn the volume down",
]
MUSIC_ON = [
    "play some music",
    "play music",
    "start the music",
    "turn on the music",
    "music on",
    "put on some music",
]
MUSIC_OFF = [
    "stop the music",
    "turn off the music",
    "pause the music",
    "music off",
    "switch off the music",
    "stop playing music",
]
LAMP_ON = [
    "turn on the lamp",
    "switch on the lamp",
    "lamp on",
    "turn the lamp on",
    "switch the lamp on",
]
LAMP_OFF = [
    "turn off the lamp",
    "switch off the lamp",
    "lamp off",
    "turn the lamp off",
    "switch the lamp off",
]
BRING = {
    "newspaper": [
        "bring me the newspaper",
        "fetch the newspaper",
        "get me the newspaper",
        "bring the newspaper please",
        "i want the newspaper",
        "go get the newspaper",
    ],
    "juice": [
        "bring me some juice",
        "fetch me some juice",
        "get me a juice",
        "bring juice please",
        "i want some juice",
        "go get the juice",
    ],
    "socks": [
        "bring me my socks",
        "fetch my socks",
        "get me my socks",
        "bring the socks please",
        "i need my socks",
        "go get my socks",
    ],
    "shoes": [
        "bring me my shoes",
        "fetch my shoes",
        "get me my shoes",
        "bring the shoes please",
        "i need my shoes",
        "go get my shoes",
    ],
}
LANG_TO = [
    "change the language to {X}",
    "switch to {X}",
    "set the language to {X}",
    "{X} please",
    "use {X}",
    "switch the language to {X}",
]
LANG_NONE = [
    "change the language",
    "change language",
    "switch the language",
    "language settings",
    "use a different language",
]


def intents():
    """[(action, object, location, [phrases])] in label order (31 entries)."""
    out = []
    for loc in LOCATIONS:
        out.append(("activate", "lights", loc, _loc_variants(loc, LIGHTS_ON_LOC, LIGHTS_ON)))
    for loc in LOCATIONS:
        out.append(("deactivate", "lights", loc, _loc_variants(loc, LIGHTS_OFF_LOC, LIGHTS_OFF)))
    out.append(("increase", "volume", "none", VOLUME_UP))
    out.append(("decrease", "volume", "none", VOLUME_DOWN))
    for loc in LOCATIONS:
        out.append(("increase", "heat", loc, _loc_variants(loc, HEAT_UP_LOC, HEAT_UP)))
    for loc in LOCATIONS:
        out.append(("decrease", "heat", loc, _loc_variants(loc, HEAT_DOWN_LOC, HEAT_DOWN)))
    out.append(("activate", "music", "none", MUSIC_ON))
    out.append(("deactivate", "music", "none", MUSIC_OFF))
    out.append(("activate", "lamp", "none", LAMP_ON))
    out.append(("deactivate", "lamp", "none", LAMP_OFF))
    for obj, phr in BRING.items():
        out.append(("bring", obj, "none", phr))
    for lang in LANGUAGES:
        out.append(("change language", lang, "none", [t.format(X=lang) for t in LANG_TO]))
    out.append(("change language", "none", "none", LANG_NONE))
    assert len(out) == 31, len(out)
    # phrases must be unique across intents, otherwise labels would be ambiguous
    seen = {}
    for i, (_, _, _, phr) in enumerate(out):
        for p in phr:
            assert p not in seen, (p, seen.get(p), i)
            seen[p] = i
    return out


def label(a, o, l):
    return f"{a}|{o}|{l}"


if __name__ == "__main__":
    its = intents()
    print(len(its), "intents,", sum(len(p) for *_, p in its), "phrases")
    for a, o, l, p in its:
        print(label(a, o, l), len(p), p[0])
