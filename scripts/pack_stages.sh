# Sourced by scripts/train_starter_pack.sh and scripts/train_vlm_pack.sh (not run on its own).
#
# stage NAME CMD...   runs CMD unless $WORK/NAME.done exists (then says how to redo it),
#                     records its wall time in NAME.done, then calls `stage_finished NAME`,
#                     which each script defines: the later stages a redone one invalidates.
stage() {
  local name=$1
  shift
  if [ -f "$WORK/$name.done" ]; then
    echo "== $name: done (delete $WORK/$name.done to redo)"
    return
  fi
  echo "== $name"
  local t0=$SECONDS
  "$@"
  echo "$((SECONDS - t0)) s" > "$WORK/$name.done"
  echo "== $name finished in $((SECONDS - t0)) s"
  stage_finished "$name"
}
