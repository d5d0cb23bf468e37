#!/usr/bin/env bash
# Put karpathy/nanoGPT beside the project (never inside it, never committed) with its shakespeare_char
# data prepared offline from a local copy of tiny Shakespeare, and print the command that trains it
# like minigpt's baby preset (for `minigpt bench --contention --peer-cmd ...`).
#
# usage: benchmarks/nanogpt_setup.sh SOURCE DEST [CORPUS] [ITERS]
#   SOURCE  a nanoGPT checkout, or a bare git directory of one
#   DEST    where to put it (created; e.g. /tmp/nanoGPT)
#   CORPUS  tiny Shakespeare as text (default /work/shared/data/tinyshakespeare.txt)
#   ITERS   iterations of the printed command (default 200)
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,11p' "$0" >&2
    exit 2
fi
source=$1
dest=$2
corpus=${3:-/work/shared/data/tinyshakespeare.txt}
iters=${4:-200}
python=${PYTHON:-python}

mkdir -p "$dest"
if [ -d "$source/.git" ]; then
    git -C "$source" archive HEAD | tar -x -C "$dest"
else
    git --git-dir="$source" archive HEAD | tar -x -C "$dest"
fi
cp "$corpus" "$dest/data/shakespeare_char/input.txt"
# prepare.py imports requests only to download input.txt, which is already there: a stand-in module if it is absent
(cd "$dest/data/shakespeare_char" && "$python" -c "
import sys, types
try:
    import requests  # noqa: F401
except ImportError:
    sys.modules['requests'] = types.ModuleType('requests')
__file__ = 'prepare.py'
exec(compile(open('prepare.py').read(), 'prepare.py', 'exec'))
" >&2)

# the baby preset in nanoGPT's flags (README: nanoGPT's CPU config); one evaluation, of one batch, at iter 0;
# nothing saved; a line per iteration for the benchmark to read
echo "cd $dest && $python train.py config/train_shakespeare_char.py --device=cpu --compile=False" \
     "--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --dropout=0.0" \
     "--max_iters=$iters --lr_decay_iters=$iters --eval_interval=1000000 --eval_iters=1 --log_interval=1" \
     "--always_save_checkpoint=False --out_dir=$dest/out"
