#!/usr/bin/env bash
# The speedrun's side-by-side table: nanoGPT's baby CPU run and minigpt's baby, speedrun and speedrun-long
# presets, interleaved per seed in one session (nanoGPT seed s, then each minigpt preset seed s), each timed
# as a whole process (start-up, evaluations and checkpoints included); every minigpt run is then scored on
# the whole validation split with `minigpt eval`. Run it on a quiet machine: nothing else may run meanwhile.
#
# usage: benchmarks/speedrun_side_by_side.sh NANOGPT OUT [SEEDS] [PRESETS]
#   NANOGPT  a nanoGPT folder prepared by benchmarks/nanogpt_setup.sh (its shakespeare_char data in place)
#   OUT      a new folder for the runs, the timings (times.tsv) and the table (table.md)
#   SEEDS    default "1 2 3"
#   PRESETS  default "baby speedrun speedrun-long"
# Extra minigpt flags for every run: MINIGPT_FLAGS="--threads 2" (say so beside any number it gives).
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,13p' "$0" >&2
    exit 2
fi
nanogpt=$(cd "$1" && pwd)
out=$2
seeds=${3:-1 2 3}
presets=${4:-baby speedrun speedrun-long}
python=${PYTHON:-python}
minigpt=${MINIGPT:-minigpt}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# nanoGPT seeds torch with 1337 + rank offset; a copy of train.py reads the seed from SEED instead (the
# copy lives in the nanoGPT folder, outside this project)
sed 's/torch.manual_seed(1337 + seed_offset)/torch.manual_seed(int(os.environ.get("SEED", 1337)) + seed_offset)/' \
    "$nanogpt/train.py" > "$nanogpt/train_seeded.py"
grep -q 'os.environ.get("SEED"' "$nanogpt/train_seeded.py" || { echo "could not patch nanoGPT's seed" >&2; exit 1; }

seconds() { "$python" -c 'import time; print(f"{time.monotonic():.3f}")'; }
timed() {  # name seed command...: run it, append "name seed wall_s" to times.tsv
    local name=$1 seed=$2
    shift 2
    local start end
    start=$(seconds)
    "$@" > "$out/$name-$seed.log" 2>&1
    end=$(seconds)
    echo -e "$name\t$seed\t$("$python" -c "print(f'{$end - $start:.1f}')")" | tee -a "$out/times.tsv"
}

for seed in $seeds; do
    # nanoGPT's README command for a CPU (its own evaluations every 250 steps, 20 batches each)
    timed nanogpt "$seed" env SEED="$seed" bash -c "cd '$nanogpt' && exec '$python' train_seeded.py \
        config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1 \
        --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 \
        --lr_decay_iters=2000 --dropout=0.0 --out_dir='$out/nanogpt-$seed'"
    for preset in $presets; do
        # shellcheck disable=SC2086
        timed "$preset" "$seed" "$minigpt" train --headless --preset "$preset" --seed "$seed" \
            --dataset shakespeare --out "$out/$preset-$seed" ${MINIGPT_FLAGS:-}
    done
done

# scoring is not timed: the whole validation split, best checkpoint of each minigpt run
for preset in $presets; do
    for seed in $seeds; do
        "$minigpt" eval "$out/$preset-$seed" --dataset shakespeare --json "$out/$preset-$seed/eval.json" > /dev/null
    done
done
"$python" - "$out" <<'EOF'
import json, statistics, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = {}
for line in (out / "times.tsv").read_text().splitlines():
    name, seed, wall = line.split("\t")
    rows.setdefault(name, []).append((int(seed), float(wall)))
reference = statistics.fmean(w for _, w in rows["nanogpt"])
lines = ["| run | wall s per seed | mean | x nanoGPT | val loss, whole split (mean ± sd) |", "|---|---|---|---|---|"]
for name, runs in rows.items():
    walls = [w for _, w in runs]
    if name == "nanogpt":
        loss = "(not scored: its own estimate is in its log)"
    else:
        losses = [json.loads((out / f"{name}-{s}" / "eval.json").read_text())["val_loss"] for s, _ in runs]
        sd = f" ± {statistics.stdev(losses):.3f}" if len(losses) > 1 else ""
        loss = ", ".join(f"{x:.3f}" for x in losses) + f" ({statistics.fmean(losses):.3f}{sd})"
    lines.append(f"| {name} | {', '.join(f'{w:.1f}' for w in walls)} | {statistics.fmean(walls):.1f} | "
                 f"{statistics.fmean(walls) / reference:.2f} | {loss} |")
table = "\n".join(lines) + "\n"
(out / "table.md").write_text(table)
print(table)
EOF
