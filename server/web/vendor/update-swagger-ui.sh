#!/usr/bin/env bash
# Re-vendors swagger-ui-dist from the npm registry: bash server/web/vendor/update-swagger-ui.sh VERSION
set -euo pipefail
version=${1:?usage: update-swagger-ui.sh VERSION}
dest=$(cd "$(dirname "$0")" && pwd)/swagger-ui
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# npm pack checks the tarball against the registry's published integrity.
(cd "$tmp" && npm pack --silent "swagger-ui-dist@$version" >/dev/null && tar xzf swagger-ui-dist-*.tgz)
for f in swagger-ui-bundle.js swagger-ui.css LICENSE NOTICE swagger-ui-bundle.js.LICENSE.txt; do
  cp "$tmp/package/$f" "$dest/$f"
done
echo "integrity: $(npm view "swagger-ui-dist@$version" dist.integrity)"
wc -c "$dest/swagger-ui-bundle.js" "$dest/swagger-ui.css"
