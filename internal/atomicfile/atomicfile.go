// Package atomicfile replaces files so that a reader (a daemon, the agent
// after a crash) sees the old content or the new one, never a part.
package atomicfile

import (
	"os"
	"path/filepath"
	"syscall"
)

// Write replaces path with content at exactly mode (the umask does not
// apply): a temporary file in the same directory, synced, renamed over path,
// then the directory synced so that the rename survives a power loss.
func Write(path string, content []byte, mode os.FileMode) error {
	return write(path, content, mode, -1, -1)
}

// WriteLike replaces path as Write does, with the mode and owner that fi
// (the file it replaces) has: for a file a daemon that drops root reads
// and replaces itself.
func WriteLike(path string, content []byte, fi os.FileInfo) error {
	uid, gid := -1, -1
	if s, ok := fi.Sys().(*syscall.Stat_t); ok {
		uid, gid = int(s.Uid), int(s.Gid)
	}
	return write(path, content, fi.Mode().Perm(), uid, gid)
}

func write(path string, content []byte, mode os.FileMode, uid, gid int) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".mqha-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	if _, err := f.Write(content); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if uid >= 0 {
		if err := f.Chown(uid, gid); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
