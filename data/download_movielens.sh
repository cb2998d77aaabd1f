#!/usr/bin/env bash
# Downloads a MovieLens dataset from GroupLens into data/, verifies the archive against the
# MD5 checksum GroupLens publishes, and unpacks it. The data is licensed by GroupLens
# (see its README): use it, never commit or redistribute it.
#
#   data/download_movielens.sh [ml-1m|ml-100k]     (default ml-1m)
#
# Then train on it directly, or write the NCF-format split first:
#   ncf train --data data/ml-1m
#   ncf data split --input data/ml-1m --out data/ml-1m-split
set -euo pipefail

name="${1:-ml-1m}"
case "$name" in
  ml-1m)   md5="c4d9eecfca2ab87c1945afe126590906" ;;
  ml-100k) md5="0e33842e24a9c977be4e0107933c0723" ;;
  *) echo "error: unknown dataset '$name' (expected ml-1m or ml-100k)" >&2; exit 2 ;;
esac
url="https://files.grouplens.org/datasets/movielens/$name.zip"
here="$(cd "$(dirname "$0")" && pwd)"
zip="$here/$name.zip"
part="$zip.part"

if [ -d "$here/$name" ]; then
  echo "$here/$name already exists; remove it to download again" >&2
  exit 0
fi

if [ -f "$zip" ]; then
  echo "using the archive already at $zip"
else
echo "downloading $url"
if command -v curl >/dev/null; then
  fetch() { curl --fail --location --silent --show-error --connect-timeout 20 -o "$part" "$url"; }
elif command -v wget >/dev/null; then
  fetch() { wget --quiet --timeout=20 -O "$part" "$url"; }
else
  echo "error: need curl or wget to download $url" >&2; exit 1
fi
if ! fetch; then
  rm -f "$part"
  echo "error: could not download $url (is this machine offline?). Download it elsewhere, put it at $zip and run this script again." >&2
  exit 1
fi
mv "$part" "$zip"
fi

got="$(md5sum "$zip" | cut -d' ' -f1)"
if [ "$got" != "$md5" ]; then
  echo "error: $zip has MD5 $got, expected $md5 (corrupt or changed download); removed it" >&2
  rm -f "$zip"
  exit 1
fi
echo "checksum ok ($md5)"

if command -v unzip >/dev/null; then
  unzip -q "$zip" -d "$here"
else
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$zip" "$here"
fi
echo "unpacked into $here/$name"
