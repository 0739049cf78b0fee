#!/usr/bin/env bash
# Runs proxy jobs one at a time from a queue file, so a session's CPU never idles between runs.
#
#   experiments/proxy_queue.sh NAME [DATA]      (with the project's Python environment active)
#
# runs/NAME.txt holds one job per line, "EPOCHS ARM SEED" (e.g. "4 m1_cosmom_k0.3 1"); the
# script pops the first line, runs `experiments/proxy.py --epochs EPOCHS --arms ARM --seeds SEED`
# niced (output in runs/ARM_sSEED_EPOCHSep.log), appends start / end lines with the exit status
# to runs/NAME.log, and goes on until the file is empty. Lines may be added or reordered while it
# runs. Two queues (e.g. q16 and q4) can run side by side on 2 cores.
#
# Stopping: SIGTERM (or Ctrl-C) to this script passes SIGTERM to the run, which saves a checkpoint
# and exits; the job's line goes back to the front of runs/NAME.txt, so the next start resumes it
# where it stopped. proxy.py collects each finished run into experiments/results*/ARM_sSEED.
# QUEUE_DIR (default runs) is where the queue file and the logs live; the training runs stay in
# proxy.py's own runs/proxy*.
set -u
cd "$(dirname "$0")/.."
name=${1:?usage: experiments/proxy_queue.sh NAME [DATA] (jobs from runs/NAME.txt)}
data=${2:-../shared/data/cifar-10-binary.tar.gz}
dir=${QUEUE_DIR:-runs}
queue=$dir/$name.txt
log=$dir/$name.log
mkdir -p "$dir"
line=
child=

stamp() { date -u +%FT%T; }

put_back() {
  { echo "$line"; cat "$queue" 2>/dev/null; } > "$queue.tmp" && mv "$queue.tmp" "$queue"
}

stop() {
  if [ -n "$child" ]; then
    kill -TERM "$child" 2>/dev/null
    wait "$child"
  fi
  if [ -n "$line" ]; then
    put_back
    echo "$(stamp) stopped $line (back at the front of $queue)" >> "$log"
  fi
  exit 143
}
trap stop TERM INT

while true; do
  [ -f "$queue" ] && sed -i '/^[[:space:]]*$/d' "$queue"   # a blank line does not end the queue
  line=$(head -n 1 "$queue" 2>/dev/null)
  [ -z "$line" ] && break
  sed -i 1d "$queue"
  read -r epochs arm seed <<< "$line"
  echo "$(stamp) start $line" >> "$log"
  nice -n 10 python experiments/proxy.py --data "$data" --epochs "$epochs" --arms "$arm" \
      --seeds "$seed" > "$dir/${arm}_s${seed}_${epochs}ep.log" 2>&1 &
  child=$!
  wait "$child"
  rc=$?
  child=
  echo "$(stamp) end $line rc=$rc" >> "$log"
  line=
done
echo "$(stamp) $queue is empty" >> "$log"
