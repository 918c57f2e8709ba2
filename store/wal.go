package store

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Durable writes through a write-ahead log.
//
// A bbolt commit that syncs writes every page the transaction touched and
// calls fdatasync twice, a little under a millisecond on a VM disk. The
// store instead commits with bbolt's NoSync and makes each group commit
// durable with one record appended to a preallocated log file and one
// fdatasync. The record is the redo log of the transaction (redo.go): what
// it put and deleted, bucket by bucket.
//
// A checkpoint makes the database file itself durable up to a transaction
// T: it syncs the file and saves T's two meta pages in FILE-ckpt, with the
// log position from which the records after T start. FILE-ckpt has two
// slots, written in turn in place, so a torn write leaves the previous
// checkpoint, whose pin is still held then. From T on, a read
// transaction opened at T (the pin) stops bbolt from reusing any page T
// uses, so whatever later commits write, and whatever part of it reaches
// the disk before a power cut, T's tree stays intact on disk. Recovery puts
// T's meta pages back, opens the file as of T and replays the records after
// it in one synced transaction.
//
// The log has two segments, FILE-wal0 and FILE-wal1, written in turn: a
// checkpoint switches the appends to the other segment, and only once the
// checkpoint is durable is the old pin released and the segment it
// switched away from free for reuse. Checkpoints run every 100 ms under
// load: bbolt can reuse only pages both allocated and freed since the pin,
// so the free list, which every commit writes, grows with the interval. Records carry the session's random
// epoch and consecutive sequence numbers, so stale records from before
// the last checkpoint or from an earlier run are never replayed.
//
// A clean Close syncs the file and removes FILE-ckpt: a database without
// a checkpoint file is current on its own.
var (
	walSegmentSize     int64 = 32 << 20               // bytes per segment, zero-filled once
	walCheckpointAt          = walSegmentSize / 4     // log bytes that start a checkpoint
	walCheckpointEvery       = 100 * time.Millisecond // and the time that does
	walIdle                  = time.Second            // quiet time after which one starts
	logAIO                   = true                   // sync the log through AIO where available
)

// mmapLimit is the mapping bbolt gets at open. A pinned reader blocks
// bbolt's remapping, which a growing file needs past this size, so a
// database this large commits without the log (every commit syncs itself).
var mmapLimit = 1 << (30 + 5*(strconv.IntSize/64)) // 32 GiB (1 GiB on 32-bit)

const (
	mmapMargin   = 1 << 30 // growth one group commit cannot exceed
	recordHeader = 24      // epoch, seq, length, CRC-32C
	ckptMagic    = "SLDBCKP1"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// wal is the log's write side; only the committer uses it.
type wal struct {
	seg    [2]*os.File
	active int   // segment being appended to
	off    int64 // next append offset in it
	epoch  uint64
	seq    uint64 // last sequence number used
	buf    []byte

	aio aioContext // 0: without AIO (see sync)
}

func segmentPath(db string, i int) string { return fmt.Sprintf("%s-wal%d", db, i) }
func checkpointPath(db string) string     { return db + "-ckpt" }

// openSegments opens (creating and zero-filling as needed) both segments.
// They are written in full once so that an append later changes no file
// metadata and its fdatasync writes only the data.
func openSegments(db string) ([2]*os.File, error) {
	var segs [2]*os.File
	created := false
	for i := range segs {
		f, err := os.OpenFile(segmentPath(db, i), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			closeAll(segs[:])
			return segs, fmt.Errorf("open log: %w", err)
		}
		segs[i] = f
		st, err := f.Stat()
		if err != nil {
			closeAll(segs[:])
			return segs, fmt.Errorf("open log: %w", err)
		}
		if st.Size() >= walSegmentSize {
			continue
		}
		created = true
		zero := make([]byte, 1<<20)
		for off := st.Size(); off < walSegmentSize; off += int64(len(zero)) {
			n := min(int64(len(zero)), walSegmentSize-off)
			if _, err := f.WriteAt(zero[:n], off); err != nil {
				closeAll(segs[:])
				return segs, fmt.Errorf("preallocate log: %w", err)
			}
		}
		if err := f.Sync(); err != nil {
			closeAll(segs[:])
			return segs, fmt.Errorf("preallocate log: %w", err)
		}
	}
	if created {
		if err := syncDir(filepath.Dir(db)); err != nil {
			closeAll(segs[:])
			return segs, err
		}
	}
	return segs, nil
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		if f != nil {
			f.Close()
		}
	}
}

func newEpoch() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:])
}

// fits reports whether a record of n payload bytes fits in the segment.
func (w *wal) fits(n int) bool {
	return w.off+recordHeader+int64(n) <= walSegmentSize
}

// write writes payload as the next record, and returns the segment to
// sync to make it durable.
func (w *wal) write(payload []byte) (*os.File, error) {
	w.buf = appendRecord(w.buf[:0], w.epoch, w.seq+1, payload)
	f := w.seg[w.active]
	if _, err := f.WriteAt(w.buf, w.off); err != nil {
		return nil, fmt.Errorf("write log: %w", err)
	}
	w.seq++
	w.off += int64(len(w.buf))
	return f, nil
}

// rawWaitLimit is how long the committer keeps its P while it waits for a
// log sync (see sync).
const rawWaitLimit = time.Millisecond

// sync makes the log segment f durable.
//
// A blocking system call normally hands the goroutine's P to other
// goroutines, and the goroutine queues for a P again when the call
// returns. With two cores busy with requests that wait was most of the
// log sync's cost: 290 µs a sync against 195 µs when the committer kept
// its P through the call, and provisioning 7-25% faster, across
// interleaved runs. But a goroutine that keeps its P through a long
// system call also holds up the garbage collector's stop-the-world
// phases, and a disk that stalls for seconds would then stall every
// request, reads included. So the sync runs through AIO (aio.go), whose
// wait can time out: the committer keeps its P for up to rawWaitLimit,
// which covers a sync on SSD and VM disks, and then waits the ordinary
// way. Where AIO is not available, or this filesystem refuses it, the
// ordinary fdatasync is used. With a single P, which a kept P would take
// from every other goroutine, the wait is always the ordinary one.
func (w *wal) sync(f *os.File) error {
	if w.aio != 0 {
		err := w.aio.submitFdsync(f.Fd())
		runtime.KeepAlive(f)
		if err == nil {
			keep := rawWaitLimit
			if runtime.GOMAXPROCS(0) < 2 {
				keep = 0
			}
			return w.aio.wait(keep)
		}
		w.aio.destroy()
		w.aio = 0
	}
	return fdatasync(f)
}

func appendRecord(b []byte, epoch, seq uint64, payload []byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, epoch)
	b = binary.LittleEndian.AppendUint64(b, seq)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
	crc := crc32.Update(crc32.Checksum(b[len(b)-20:], castagnoli), castagnoli, payload)
	b = binary.LittleEndian.AppendUint32(b, crc)
	return append(b, payload...)
}

// readRecord reads the record at off in a segment of size bytes if it is
// intact and is (epoch, seq); ok is false otherwise (the end of the log).
func readRecord(r io.ReaderAt, off, size int64, epoch, seq uint64) (payload []byte, next int64, ok bool) {
	if off+recordHeader > size {
		return nil, 0, false
	}
	var h [recordHeader]byte
	if _, err := r.ReadAt(h[:], off); err != nil {
		return nil, 0, false
	}
	if binary.LittleEndian.Uint64(h[0:]) != epoch || binary.LittleEndian.Uint64(h[8:]) != seq {
		return nil, 0, false
	}
	n := int64(binary.LittleEndian.Uint32(h[16:]))
	if off+recordHeader+n > size {
		return nil, 0, false
	}
	payload = make([]byte, n)
	if _, err := r.ReadAt(payload, off+recordHeader); err != nil {
		return nil, 0, false
	}
	crc := crc32.Update(crc32.Checksum(h[:20], castagnoli), castagnoli, payload)
	if crc != binary.LittleEndian.Uint32(h[20:]) {
		return nil, 0, false
	}
	return payload, off + recordHeader + n, true
}

// readLog returns the records of epoch after sequence number seq, starting
// at the beginning of segment first and going on in the other segment
// when one ends.
func readLog(segs [2]io.ReaderAt, size int64, epoch, seq uint64, first int) [][]byte {
	var out [][]byte
	s, off, progressed := first, int64(0), true
	for {
		payload, next, ok := readRecord(segs[s], off, size, epoch, seq+1)
		if ok {
			out = append(out, payload)
			seq++
			off, progressed = next, true
			continue
		}
		if !progressed {
			return out
		}
		s, off, progressed = 1-s, 0, false
	}
}

// checkpoint is one of the two slots of FILE-ckpt.
type checkpoint struct {
	epoch   uint64
	n       uint64 // checkpoints in this epoch before this one
	seq     uint64 // the last record the database file includes
	segment int    // where the records after it start, at offset 0
	metas   []byte // the file's first two pages as of the checkpoint
}

const ckptHead = len(ckptMagic) + 32

func (c checkpoint) encode() []byte {
	b := []byte(ckptMagic)
	b = binary.LittleEndian.AppendUint64(b, c.epoch)
	b = binary.LittleEndian.AppendUint64(b, c.n)
	b = binary.LittleEndian.AppendUint64(b, c.seq)
	b = binary.LittleEndian.AppendUint32(b, uint32(c.segment))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(c.metas)))
	b = append(b, c.metas...)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

var errBadCheckpoint = errors.New("damaged checkpoint file")

func decodeCheckpoint(b []byte) (checkpoint, error) {
	if len(b) < ckptHead+4 || string(b[:len(ckptMagic)]) != ckptMagic {
		return checkpoint{}, fmt.Errorf("%w: not a checkpoint", errBadCheckpoint)
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return checkpoint{}, fmt.Errorf("%w: checksum mismatch", errBadCheckpoint)
	}
	p := b[len(ckptMagic):]
	c := checkpoint{
		epoch:   binary.LittleEndian.Uint64(p[0:]),
		n:       binary.LittleEndian.Uint64(p[8:]),
		seq:     binary.LittleEndian.Uint64(p[16:]),
		segment: int(binary.LittleEndian.Uint32(p[24:])),
	}
	n := int(binary.LittleEndian.Uint32(p[28:]))
	if c.segment > 1 || n != len(body)-ckptHead || n == 0 || n%2 != 0 {
		return checkpoint{}, fmt.Errorf("%w: bad layout", errBadCheckpoint)
	}
	c.metas = body[ckptHead:]
	return c, nil
}

// decodeCheckpoints returns the newest intact slot of a checkpoint file.
// A slot torn by a crash while it was written fails its checksum, and the
// other one, still pinned then, is used.
func decodeCheckpoints(b []byte) (checkpoint, error) {
	half := len(b) / 2
	c0, err0 := decodeCheckpoint(b[:half])
	c1, err1 := decodeCheckpoint(b[half:])
	switch {
	case err0 != nil && err1 != nil:
		return checkpoint{}, err0
	case err1 != nil || err0 == nil && c0.n > c1.n:
		return c0, nil
	default:
		return c1, nil
	}
}

// writeCheckpoint makes c durable in FILE-ckpt. The first of an epoch
// creates the file with c in one slot and zeros in the other; later ones
// overwrite the older slot in place (f, kept open), which costs one
// fdatasync and no file-system metadata.
func writeCheckpoint(db string, f *os.File, c checkpoint) error {
	enc := c.encode()
	if c.n == 0 {
		tmp := checkpointPath(db) + ".tmp"
		if err := writeFileSync(tmp, append(enc, make([]byte, len(enc))...)); err != nil {
			return fmt.Errorf("write checkpoint: %w", err)
		}
		if err := os.Rename(tmp, checkpointPath(db)); err != nil {
			return fmt.Errorf("write checkpoint: %w", err)
		}
		return syncDir(filepath.Dir(db))
	}
	if _, err := f.WriteAt(enc, int64(c.n%2)*int64(len(enc))); err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	if err := fdatasync(f); err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	return nil
}

func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

func fdatasync(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if err != syscall.EINTR {
			return err
		}
	}
}

// readMetas reads the database file's two meta pages.
func readMetas(f *os.File, pageSize int) ([]byte, error) {
	metas := make([]byte, 2*pageSize)
	if _, err := f.ReadAt(metas, 0); err != nil {
		return nil, fmt.Errorf("read meta pages: %w", err)
	}
	return metas, nil
}

// recoverLog prepares database file db for opening after an unclean stop:
// it puts the last checkpoint's meta pages back and returns the records
// logged after it, to replay. It does nothing without a checkpoint file.
func recoverLog(db string) ([][]byte, error) {
	data, err := os.ReadFile(checkpointPath(db))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("recover: %w", err)
	}
	c, err := decodeCheckpoints(data)
	if err != nil {
		return nil, fmt.Errorf("recover: %s: %w", checkpointPath(db), err)
	}
	var segs [2]io.ReaderAt
	for i := range segs {
		f, err := os.Open(segmentPath(db, i))
		if err != nil {
			return nil, fmt.Errorf("recover: the log is missing: %w", err)
		}
		defer f.Close()
		segs[i] = f
	}
	records := readLog(segs, walSegmentSize, c.epoch, c.seq, c.segment)
	f, err := os.OpenFile(db, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("recover: %w", err)
	}
	defer f.Close()
	cur := make([]byte, len(c.metas))
	if _, err := f.ReadAt(cur, 0); err != nil {
		return nil, fmt.Errorf("recover: read meta pages: %w", err)
	}
	if bytes.Equal(cur, c.metas) && len(records) == 0 {
		return nil, nil // the file is as the checkpoint left it
	}
	// Meta pages only move forward, so a file older than its checkpoint is
	// another file: a backup restored over it, say. Its pages are not the
	// checkpoint's, and putting the checkpoint's meta pages on it would
	// corrupt it.
	ct, ok := newestTxid(c.metas)
	if !ok {
		return nil, fmt.Errorf("recover: %s: %w: no intact meta page", checkpointPath(db), errBadCheckpoint)
	}
	if ft, ok := newestTxid(cur); ok && ft < ct {
		return nil, fmt.Errorf("recover: %s is older than its checkpoint (transaction %d, checkpoint at %d); if a backup was restored over it, remove %s and start again", db, ft, ct, checkpointPath(db))
	}
	if _, err := f.WriteAt(c.metas, 0); err != nil {
		return nil, fmt.Errorf("recover: restore meta pages: %w", err)
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("recover: restore meta pages: %w", err)
	}
	return records, nil
}

// replay applies recovered records in one synced transaction. It only
// writes pages free as of the checkpoint, so a crash during it leaves the
// checkpoint as good as before, and recovery starts again.
func replay(db *bolt.DB, records [][]byte) error {
	if len(records) == 0 {
		return nil
	}
	return db.Update(func(tx *bolt.Tx) error {
		for i, r := range records {
			if err := applyRedo(tx, r); err != nil {
				return fmt.Errorf("replay record %d of %d: %w", i+1, len(records), err)
			}
		}
		return nil
	})
}
