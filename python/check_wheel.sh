#!/usr/bin/env bash
# Checks the wheel in dist/ the way a user gets it: installed with `pip install --no-index` into a
# fresh venv, run with a PATH and LD_LIBRARY_PATH that hold no Swift toolchain.
#
#   python/check_wheel.sh SOURCE_BINARY AUDITWHEEL
#
# SOURCE_BINARY is a build from source (`make wheel-test` passes the test build,
# .build-test/debug/wsamerge) whose fuse output the wheel's must match byte for byte; AUDITWHEEL the auditwheel of the build tools. Run from `make wheel-test`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SOURCE_BIN=$(realpath "${1:?usage: check_wheel.sh SOURCE_BINARY AUDITWHEEL}")
AUDITWHEEL=${2:?usage: check_wheel.sh SOURCE_BINARY AUDITWHEEL}
VENV=$ROOT/.build-wheel/test-venv
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

step() { printf '== %s\n' "$*"; }
fail() { printf 'check_wheel.sh: FAILED: %s\n' "$*" >&2; exit 1; }

shopt -s nullglob
wheels=(dist/wsamerge-*.whl)
[ ${#wheels[@]} -eq 1 ] || fail "expected one wheel in dist/, found ${#wheels[@]}: run make wheel"
WHEEL=${wheels[0]}
VERSION=$(sed -n 's/.*static let current = "\(.*\)".*/\1/p' Sources/WSAMergeKit/Version.swift)
[ -n "$VERSION" ] || fail "no version in Sources/WSAMergeKit/Version.swift"
case $(basename "$WHEEL") in
  "wsamerge-$VERSION-py3-none-manylinux_"*"_x86_64.whl") ;;
  *) fail "$WHEEL: expected wsamerge-$VERSION-py3-none-manylinux_<glibc>_x86_64.whl" ;;
esac

step "auditwheel show $WHEEL"
"$AUDITWHEEL" show "$WHEEL" | sed -n '1,3p'
"$AUDITWHEEL" show --json "$WHEEL" > "$WORK/show.json"
tag=$(jq -r .overall_tag "$WORK/show.json")
case $tag in manylinux_*_x86_64) ;; *) fail "auditwheel show: tag $tag, not manylinux" ;; esac
[[ $WHEEL == *"-$tag.whl" ]] || fail "auditwheel show says $tag, the file name says otherwise"
externals=$(jq -r '.external_libs | keys | join(", ")' "$WORK/show.json")
[ -z "$externals" ] || fail "external libraries beyond the manylinux allow-list: $externals"
echo "tag $tag; no external libraries beyond the $tag allow-list"

step "fresh venv: numpy and pytest from PyPI, then pip install --no-index $WHEEL"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check numpy pytest
"$VENV/bin/pip" install -q --disable-pip-version-check --no-index "$WHEEL"

# Everything below runs as a user without Swift would: only the venv and the system directories.
clean() { env -i HOME="$HOME" LANG=C.UTF-8 PATH="$VENV/bin:/usr/bin:/bin" LD_LIBRARY_PATH= "$@"; }
installed=$(clean python -c 'import wsamerge; print(wsamerge.binary())')
clean sh -c '! command -v swift' >/dev/null || fail "swift is on the clean PATH"
[ "$(clean sh -c 'command -v wsamerge')" = "$VENV/bin/wsamerge" ] || fail "wsamerge is not the venv's command"
if clean ldd "$installed" | grep -E 'not found|/opt/swift|libswift|libFoundation|libdispatch'; then fail "ldd $installed: unresolved or Swift libraries"; fi
echo "wsamerge on PATH: $VENV/bin/wsamerge -> $installed"
clean ldd "$installed" | sed 's/^/  /'

step "wsamerge --version"
printed=$(clean wsamerge --version)
[ "$printed" = "$VERSION" ] || fail "--version printed '$printed', Version.swift says '$VERSION'"
echo "$printed (= Version.swift)"

step "fuse of the fixtures: byte-identical to $SOURCE_BIN"
inputs=(fixtures/merge/a.safetensors fixtures/merge/b.safetensors)
clean wsamerge fuse --quiet "${inputs[@]}" -o "$WORK/wheel.safetensors" > "$WORK/wheel.json"
"$SOURCE_BIN" fuse --quiet "${inputs[@]}" -o "$WORK/source.safetensors" > "$WORK/source.json"
cmp "$WORK/wheel.safetensors" "$WORK/source.safetensors" || fail "fuse outputs differ"
diff <(jq -c 'del(.output)' "$WORK/wheel.json") <(jq -c 'del(.output)' "$WORK/source.json") || fail "fuse reports differ"
echo "identical: $(wc -c < "$WORK/wheel.safetensors") bytes, sha256 $(sha256sum < "$WORK/wheel.safetensors" | cut -c1-16)…"
clean wsamerge fuse --quiet --strategy wsa "${inputs[@]}" fixtures/merge/c.npz -o "$WORK/wheel.npz" > /dev/null
"$SOURCE_BIN" fuse --quiet --strategy wsa "${inputs[@]}" fixtures/merge/c.npz -o "$WORK/source.npz" > /dev/null
cmp "$WORK/wheel.npz" "$WORK/source.npz" || fail "fuse --strategy wsa with an .npz input (libzip) differs"
echo "identical: fuse --strategy wsa with an .npz input (read through the bundled libzip), written as .npz"

step "stats | jq"
clean wsamerge stats fixtures/merge/a.safetensors | jq -e -r '.tensors[] | select(.name == "model.embed.weight") | "\(.name) mean=\(.mean) std=\(.std)"'
diff <(clean wsamerge stats fixtures/merge/a.safetensors fixtures/merge/c.npz) \
     <("$SOURCE_BIN" stats fixtures/merge/a.safetensors fixtures/merge/c.npz) > /dev/null || fail "stats differs from the source build"
echo "stats of a.safetensors and c.npz identical to the source build's"

step "errors pass through: exit code and one line on stderr"
status=0
clean wsamerge stats fixtures/merge/nope.safetensors 2> "$WORK/err" || status=$?
[ "$status" = 66 ] || fail "missing input: exit $status, expected 66"
grep -q '^wsamerge: error: fixtures/merge/nope.safetensors: ' "$WORK/err" || fail "missing input: stderr $(cat "$WORK/err")"
echo "exit 66: $(cat "$WORK/err")"

step "man page and completions"
for f in share/man/man1/wsamerge.1 share/bash-completion/completions/wsamerge \
         share/zsh/site-functions/_wsamerge share/fish/vendor_completions.d/wsamerge.fish; do
  [ -s "$VENV/$f" ] || fail "$f not installed"
  echo "$VENV/$f"
done
bash -n "$VENV/share/bash-completion/completions/wsamerge" || fail "bash completion does not parse"
grep -q '^\.Dt WSAMERGE 1' "$VENV/share/man/man1/wsamerge.1" || fail "man page"

step "pytest python/tests against the installed package"
clean WSAMERGE_TEST_INSTALLED=1 \
  "$VENV/bin/pytest" -q -p no:cacheprovider python/tests
