"""ext4 and disk-image files: builds, clones, grows and inspects them, for the disk driver.

The side effects on image files (mkfs.ext4 -d, debugfs, resize2fs, e2fsck,
qemu-img, the FICLONE ioctl), and no policy: which seed to build, at which
size, which clone method to use and when to grow is decided by the planner.
Nothing here mounts a file system. Functions write their output path
directly; callers that need atomicity write to a temporary name and rename
it (statedir.store.replacing). Failures are PermanentError, or TemporaryError
when they may pass by themselves (a full file system).

tools: running e2fsprogs and reading files; image: inspecting, building, reading
and writing ext4 images; clone: seeds to work disks, growing, e2fsck; tree:
whole trees as values.
"""

from ...base.kinds import CloneMethod, DiskFormat
from .clone import clone, detect_clone_methods, fsck, grow
from .image import (
    Ext4Info,
    build_ext4,
    content_size,
    disk_format,
    ext4_has_dir,
    ext4_info,
    extract_dir,
    inject_file,
    is_ext4,
    virtual_size,
)
from .tools import BLOCK, GROUP_BYTES, INODE_RATIO, INODE_SIZE, SUPERBLOCK
from .tree import Tree, read_dir_tree, read_tree

__all__ = ["BLOCK", "GROUP_BYTES", "INODE_RATIO", "INODE_SIZE", "SUPERBLOCK", "CloneMethod", "DiskFormat", "Ext4Info",
           "Tree", "build_ext4", "clone", "content_size", "detect_clone_methods", "disk_format", "ext4_has_dir",
           "ext4_info", "extract_dir", "fsck", "grow", "inject_file", "is_ext4", "read_dir_tree", "read_tree",
           "virtual_size"]
