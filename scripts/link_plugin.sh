#!/usr/bin/env bash
# Link this checkout into FiftyOne's plugins directory as "gmv", so the App and
# `fiftyone plugins list` / `fiftyone operators list` find the GMValuator operators.
#
#   bash scripts/link_plugin.sh              # dir from FiftyOne's config (plugins_dir)
#   bash scripts/link_plugin.sh DIR          # an explicit plugins directory
#   bash scripts/link_plugin.sh --unlink [DIR]
#
# plugins_dir comes from FIFTYONE_PLUGINS_DIR / ~/.fiftyone/config.json, default
# ~/fiftyone/__plugins__. Uses .venv/bin/python (PYTHON=... overrides).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NAME=gmv
UNLINK=0
DIR=""
EXPLICIT=0
for arg in "$@"; do
    case "$arg" in
        --unlink) UNLINK=1 ;;
        -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
        -*) echo "link_plugin.sh: unknown option: $arg" >&2; exit 2 ;;
        *) DIR=$arg; EXPLICIT=1 ;;
    esac
done

if [[ -z "$DIR" ]]; then
    PY=${PYTHON:-$ROOT/.venv/bin/python}
    [[ -x "$PY" ]] || PY=python3
    # Only the config is read; importing fiftyone starts no database.
    DIR=$("$PY" -c 'import fiftyone as fo; print(fo.config.plugins_dir or "")' | tail -n 1) ||
        { echo "link_plugin.sh: could not read fo.config.plugins_dir with $PY (run scripts/setup.sh?)" >&2; exit 1; }
    DIR=${DIR:-$HOME/fiftyone/__plugins__}
fi
LINK="$DIR/$NAME"

if [[ "$UNLINK" == 1 ]]; then
    if [[ -L "$LINK" ]]; then
        rm "$LINK"
        echo "removed $LINK"
    else
        echo "no link at $LINK"
    fi
    exit 0
fi

[[ -f "$ROOT/fiftyone.yml" ]] || { echo "link_plugin.sh: $ROOT has no fiftyone.yml" >&2; exit 1; }
mkdir -p "$DIR"
if [[ -L "$LINK" ]]; then
    if [[ "$(readlink -f "$LINK")" == "$ROOT" ]]; then
        echo "already linked: $LINK -> $ROOT"
    else
        echo "replacing $LINK -> $(readlink "$LINK")"
        ln -sfn "$ROOT" "$LINK"
        echo "linked $LINK -> $ROOT"
    fi
elif [[ -e "$LINK" ]]; then
    echo "link_plugin.sh: $LINK exists and is not a symlink; not touching it" >&2
    exit 1
else
    ln -s "$ROOT" "$LINK"
    echo "linked $LINK -> $ROOT"
fi

if [[ "$EXPLICIT" == 1 && "${FIFTYONE_PLUGINS_DIR:-}" != "$DIR" ]]; then
    echo "note: FiftyOne looks in $DIR only if it is its plugins_dir (FIFTYONE_PLUGINS_DIR=$DIR)"
fi
echo "check: fiftyone plugins list; fiftyone operators list | grep gmv"
