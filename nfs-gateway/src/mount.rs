//! The MOUNT protocol (version 3), served on the NFS port so that no portmapper is needed.

use elasticfs_core::metadata::{FileKind, ROOT_INO};
use elasticfs_core::MAY_EXEC;
use nfs3_types::mount::{dirpath, export_node, exports, fhandle3, mountres3, mountres3_ok, mountstat3};
use nfs3_types::rpc::auth_flavor;
use nfs3_types::xdr_codec::{List, Opaque, Unpack, Void};

use crate::nfs::{packed, Reply};
use crate::Gateway;

impl Gateway {
    /// Runs MOUNT procedure `proc`; `None` if its arguments do not decode.
    pub(crate) fn mount_call(
        &self,
        proc: u32,
        args: &mut &[u8],
        allowed: bool,
        who: &elasticfs_core::Identity,
    ) -> Option<Reply> {
        Some(match proc {
            0 => packed(Void),
            1 => {
                let (path, _) = dirpath::unpack(args).ok()?;
                packed(if allowed {
                    self.mnt(path.0.as_ref(), who)
                } else {
                    mountres3::Err(mountstat3::MNT3ERR_ACCES)
                })
            }
            // Nothing is remembered about who mounted: NFSv3 is stateless, and so is this.
            2 => packed(List::<nfs3_types::mount::mountbody>(Vec::new())),
            3 => {
                dirpath::unpack(args).ok()?;
                packed(Void)
            }
            4 => packed(Void),
            5 => {
                let root =
                    export_node { ex_dir: dirpath(Opaque::borrowed(b"/")), ex_groups: List(Vec::new()) };
                let list: exports = List(vec![root]);
                packed(list)
            }
            _ => Reply::NoSuchProcedure,
        })
    }

    /// The handle of an exported directory: "/" or any directory below it.
    fn mnt(&self, path: &[u8], who: &elasticfs_core::Identity) -> mountres3<'static> {
        let mut attr = match self.fs.getattr(ROOT_INO) {
            Ok(attr) => attr,
            Err(_) => return mountres3::Err(mountstat3::MNT3ERR_IO),
        };
        for name in path.split(|b| *b == b'/').filter(|n| !n.is_empty() && *n != b".") {
            if name.len() > 255 {
                return mountres3::Err(mountstat3::MNT3ERR_NAMETOOLONG);
            }
            if !who.may(&attr, MAY_EXEC) {
                return mountres3::Err(mountstat3::MNT3ERR_ACCES);
            }
            attr = match self.fs.lookup(attr.ino, name) {
                Ok(next) => next,
                Err(_) => return mountres3::Err(mountstat3::MNT3ERR_NOENT),
            };
        }
        if attr.kind != FileKind::Dir {
            return mountres3::Err(mountstat3::MNT3ERR_NOTDIR);
        }
        mountres3::Ok(mountres3_ok {
            fhandle: fhandle3(self.handle_of(&attr).data),
            auth_flavors: vec![auth_flavor::AUTH_UNIX as u32, auth_flavor::AUTH_NULL as u32],
        })
    }
}
