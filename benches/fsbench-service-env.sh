# fsbench `cmd` target for an elasticfs mount through a metadata service: source this, then
#   python3 fsbench.py run --targets cmd,juicefs-redis --workloads mdtest ...
# The service starts at the first mount in the target's state directory and outlives the
# harness's cold remounts; stop it after the run: pkill -f "meta serve --db /tmp/fsbench".
export ELASTICFS_BIN="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release/elasticfs"
export FSBENCH_MOUNT_CMD='export AWS_ACCESS_KEY_ID="$FSBENCH_S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$FSBENCH_S3_SECRET_KEY" AWS_REGION="$FSBENCH_S3_REGION";
  B="$ELASTICFS_BIN"; S="$FSBENCH_STATE_DIR";
  if [ ! -s "$S/port" ]; then
    nohup setsid $B meta serve --db "$S/meta" --listen 127.0.0.1:0 > "$S/serve.out" 2> "$S/serve.log" < /dev/null &
    for i in $(seq 50); do [ -s "$S/serve.out" ] && break; sleep 0.1; done
    sed -n "s/listening on 127.0.0.1://p" "$S/serve.out" > "$S/port"
  fi
  M="tcp://127.0.0.1:$(cat $S/port)";
  [ -e "$S/formatted" ] || { $B format --meta "$M" --storage s3 --bucket "$FSBENCH_S3_ENDPOINT/$FSBENCH_S3_BUCKET" --throughput elastic && touch "$S/formatted"; };
  $B mount --meta "$M" -d --log "$S/mount.log" -o cache-dir="$FSBENCH_CACHE_DIR" {mnt}'
export FSBENCH_UMOUNT_CMD='"$ELASTICFS_BIN" umount {mnt}'
