#!/usr/bin/env bash
# Build Kamailio's http_async_client module, which Debian does not package,
# from Debian's own source package of the installed Kamailio version, so the
# module matches the binary exactly. Idempotent: does nothing if the module
# is already built for that version.
#
# Usage: build-http-async-client.sh OUTPUT_DIR
# Result: OUTPUT_DIR/http_async_client.so (load it by absolute path).
set -euo pipefail

out_dir=$(realpath -m "${1:?usage: $0 OUTPUT_DIR}")
version=$(dpkg-query -W -f='${Version}' kamailio)
stamp="$out_dir/http_async_client.version"
if [[ -f "$out_dir/http_async_client.so" && "$(cat "$stamp" 2>/dev/null)" == "$version" ]]; then
    exit 0
fi

# A deb-src entry made from the machine's own Debian sources: the mirror
# is whatever this machine already uses; nothing is hard-coded here.
src_list=/etc/apt/sources.list.d/c4-deb-src.sources
if ! apt-get source --print-uris -qq "kamailio=$version" >/dev/null 2>&1; then
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        sed -e 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$src_list"
    elif [[ -f /etc/apt/sources.list ]]; then
        grep -E '^deb ' /etc/apt/sources.list | sed -e 's/^deb /deb-src /' > "${src_list%.sources}.list"
    else
        echo "no apt sources found to derive a deb-src entry from" >&2
        exit 1
    fi
    apt-get update -qq
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
log="$work/build.log"
if ! { apt-get source -qq --download-only "kamailio=$version" \
        && dpkg-source -x kamailio_*.dsc src \
        && make -C src cfg \
        && make -C src/src/modules/http_async_client; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "building http_async_client failed" >&2
    exit 1
fi
cd src
mkdir -p "$out_dir"
install -m 0644 src/modules/http_async_client/http_async_client.so "$out_dir/"
echo "$version" > "$stamp"
echo "built http_async_client.so for kamailio $version in $out_dir"
