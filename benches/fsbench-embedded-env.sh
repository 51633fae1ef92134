# fsbench `cmd` target for an elasticfs mount of an embedded store (the default setup) with its
# chunks in the harness's SeaweedFS bucket: source this, then
#   python3 fsbench.py run --targets cmd,juicefs --size full ...
# ELASTICFS_BIN may name another build (to compare two commits in one run);
# ELASTICFS_FORMAT_ARGS adds format options (e.g. "--throughput bursting", which holds a new file
# system to EFS's burst floor of 100 MiB/s; the default is elastic); ELASTICFS_MOUNT_OPTS adds
# mount options (e.g. "commit=5s" for the deferred-commit run).
export ELASTICFS_BIN="${ELASTICFS_BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release/elasticfs}"
export FSBENCH_MOUNT_CMD='export AWS_ACCESS_KEY_ID="$FSBENCH_S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$FSBENCH_S3_SECRET_KEY" AWS_REGION="$FSBENCH_S3_REGION";
  B="$ELASTICFS_BIN"; M="sled://$FSBENCH_STATE_DIR/meta";
  [ -e "$FSBENCH_STATE_DIR/meta" ] || $B format --meta "$M" --storage s3 --bucket "$FSBENCH_S3_ENDPOINT/$FSBENCH_S3_BUCKET" $ELASTICFS_FORMAT_ARGS;
  $B mount --meta "$M" -d --log "$FSBENCH_STATE_DIR/mount.log" -o cache-dir="$FSBENCH_CACHE_DIR"${ELASTICFS_MOUNT_OPTS:+,$ELASTICFS_MOUNT_OPTS} {mnt}'
export FSBENCH_UMOUNT_CMD='"$ELASTICFS_BIN" umount {mnt}'
