#!/usr/bin/env bash
# Build a local Debian 13 (trixie) image with python3 and tag it, for
# machines that cannot pull the Dockerfile's default base from a registry.
#
# Usage: .ci/build-base-image.sh [TAG]        (default TAG: repack-base:trixie-tini)
#
# The root file system comes from mmdebstrap, fed with the Debian mirrors that
# this machine's apt configuration already uses, so the script works wherever
# apt-get works. Debian 13 ships python3 3.13, the same minor version as the
# default base. An existing image with TAG is reused as it is.
set -euo pipefail

tag="${1:-repack-base:trixie-tini}"
suite=trixie

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "Reusing base image $tag" >&2
    exit 0
fi

if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "Installing mmdebstrap with apt-get" >&2
    apt-get update -q
    apt-get install -y -q mmdebstrap
fi

# Print "<kind> <uri>" for every enabled Debian entry of this machine's apt
# configuration. The kind is "archive" for <codename> and <codename>-updates,
# and "security" for <codename>-security. Entries of third-party repositories
# are ignored because their suite names differ.
list_debian_uris() {
    local codename
    codename="$(. /etc/os-release && echo "$VERSION_CODENAME")"

    {
        # One-line format: "deb [options] URI SUITE COMPONENT...".
        if [ -f /etc/apt/sources.list ]; then
            sed -e 's/#.*//' -e 's/\[[^]]*\]//' /etc/apt/sources.list \
                | awk '$1 == "deb" { print $2, $3 }'
        fi
        # deb822 format: stanzas separated by blank lines, fields "Key: value".
        local file
        for file in /etc/apt/sources.list.d/*.sources; do
            [ -f "$file" ] || continue
            awk '
                function flush(   i, n, uris, suites, j) {
                    if (types ~ /(^| )deb( |$)/ && enabled != "no") {
                        n = split(uri_field, uris, " ")
                        split(suite_field, suites, " ")
                        for (i = 1; i <= n; i++)
                            for (j in suites) print uris[i], suites[j]
                    }
                    types = ""; uri_field = ""; suite_field = ""; enabled = ""
                }
                /^[[:space:]]*#/ { next }
                /^[[:space:]]*$/ { flush(); next }
                tolower($1) == "types:"   { $1 = ""; types = $0 }
                tolower($1) == "uris:"    { $1 = ""; uri_field = $0 }
                tolower($1) == "suites:"  { $1 = ""; suite_field = $0 }
                tolower($1) == "enabled:" { enabled = tolower($2) }
                END { flush() }
            ' "$file"
        done
    } | awk -v codename="$codename" '
        $2 == codename || $2 == codename "-updates" { print "archive", $1 }
        $2 == codename "-security" || $2 == codename "/updates" { print "security", $1 }
    ' | sort -u
}

uris="$(list_debian_uris)"
archive_uri="$(awk '$1 == "archive" { print $2; exit }' <<<"$uris")"
security_uri="$(awk '$1 == "security" { print $2; exit }' <<<"$uris")"
if [ -z "$archive_uri" ]; then
    echo "ERROR: no Debian archive found in /etc/apt/sources.list or" \
         "/etc/apt/sources.list.d/*.sources; add one or pull the default base." >&2
    exit 1
fi
# Without a separate security entry, the archive mirror is asked for the
# security suite too, which works for mirrors that carry both.
security_uri="${security_uri:-$archive_uri}"

echo "Building $tag from Debian $suite (mirrors taken from this machine's apt configuration)" >&2
start=$(date +%s)

# The essential variant has no apt and no init system, because the image only
# needs to run python3, and tini as PID 1 (see the Dockerfile). Documentation,
# manual pages and translations are left out to keep the image small.
mmdebstrap \
    --quiet \
    --variant=essential \
    --include=python3,tini \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*' \
    "$suite" - \
    "deb $archive_uri $suite main" \
    "deb $archive_uri $suite-updates main" \
    "deb $security_uri $suite-security main" \
    | docker import \
        --platform linux/amd64 \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --message "Debian $suite with python3, built by .ci/build-base-image.sh" \
        - "$tag" >/dev/null

python_version="$(docker run --rm "$tag" python3 --version)"
size="$(docker image inspect --format '{{.Size}}' "$tag")"
echo "Built $tag in $(( $(date +%s) - start )) s: $python_version, $(( size / 1000000 )) MB" >&2
