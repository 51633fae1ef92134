#!/usr/bin/env bash
# Debian's nfs-ganesha as a reference NFS server, to settle what the right answer is when a
# client tool and the gateway disagree (as the libnfs-utils NFSv4 write limit was settled):
# serves DIR over NFSv3 and NFSv4 on 127.0.0.1:PORT, in the foreground, until Ctrl-C.
#   scripts/ganesha.sh DIR [PORT]    (2050 by default; run as root; installs what it needs)
# Then, for example: nfs-cp FILE "nfs://127.0.0.1//name?version=4&nfsport=PORT"
set -euo pipefail
DIR=$(realpath "${1:?usage: scripts/ganesha.sh DIR [PORT]}")
PORT=${2:-2050}
command -v ganesha.nfsd >/dev/null || {
  apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y nfs-ganesha nfs-ganesha-vfs rpcbind >/dev/null
}
# Ganesha registers with the portmapper at start and gives up without one.
pgrep -x rpcbind >/dev/null || rpcbind
RUN=$(mktemp -d)
trap 'rm -rf "$RUN"' EXIT
cat > "$RUN/ganesha.conf" <<CONF
NFS_CORE_PARAM {
    NFS_Port = $PORT;
    Enable_UDP = false;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Bind_addr = 127.0.0.1;
}
NFSV4 { Graceless = true; }
EXPORT {
    Export_Id = 1;
    Path = $DIR;
    Pseudo = /;
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    Protocols = 3, 4;
    FSAL { Name = VFS; }
}
CONF
echo "ganesha serving $DIR on 127.0.0.1:$PORT (log: $RUN/ganesha.log while it runs)"
ganesha.nfsd -F -f "$RUN/ganesha.conf" -L "$RUN/ganesha.log" -p "$RUN/ganesha.pid"
