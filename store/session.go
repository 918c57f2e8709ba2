package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The logging session: from Open to Close the committer appends to the
// log and checkpoints (see wal.go). These methods run on the committer,
// that is while holding the writer role (committing), unless noted.

// startSession begins logging. The database file must be durable as it is:
// freshly created, cleanly closed, migrated or recovered, all of which sync.
func (s *Store) startSession() (err error) {
	path := s.db.Path()
	if fileSize(path)+mmapMargin >= mmapLimit {
		return s.noLog(path)
	}
	segs, err := openSegments(path)
	if err != nil {
		return err
	}
	var metaf, ckf *os.File
	var pin *bolt.Tx
	defer func() {
		if err != nil {
			closeAll(append(segs[:], metaf, ckf))
			if pin != nil {
				pin.Rollback()
			}
			err = fmt.Errorf("open log: %w", err)
		}
	}()
	if metaf, err = os.Open(path); err != nil {
		return err
	}
	metas, err := readMetas(metaf, s.db.Info().PageSize)
	if err != nil {
		return err
	}
	if pin, err = s.db.Begin(false); err != nil {
		return err
	}
	w := &wal{seg: segs, epoch: newEpoch()}
	if err = writeCheckpoint(path, nil, checkpoint{epoch: w.epoch, segment: 0, metas: metas}); err != nil {
		return err
	}
	if ckf, err = os.OpenFile(checkpointPath(path), os.O_RDWR, 0); err != nil {
		return err
	}
	if logAIO {
		w.aio, _ = newAIO() // without it, the log syncs with fdatasync
	}
	s.log, s.metaf, s.ckf, s.ckptN, s.pin = w, metaf, ckf, 0, pin
	s.db.NoSync = true
	s.stopIdle, s.idleDone = make(chan struct{}), make(chan struct{})
	go s.idleCheckpoints(s.stopIdle, s.idleDone)
	return nil
}

// noLog makes every commit sync the file itself, as bbolt does by default:
// for a database close to the size of bbolt's mapping, which must then be
// free to grow.
func (s *Store) noLog(path string) error {
	s.db.NoSync = false
	err := os.Remove(checkpointPath(path))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove checkpoint: %w", err)
	}
	return syncDir(filepath.Dir(path))
}

func fileSize(path string) int {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return int(st.Size())
}

// endSession makes the file durable on its own and stops logging: a clean
// close, or the switch to synced commits near the mapping's size.
func (s *Store) endSession() error {
	if s.log == nil {
		return nil
	}
	if s.stopIdle != nil {
		close(s.stopIdle)
		<-s.idleDone // it cannot hold the writer role: the caller does
		s.stopIdle = nil
	}
	s.waitCheckpoint()
	err := s.refused()
	if err == nil {
		err = s.db.Sync()
	}
	if err == nil {
		err = s.noLog(s.db.Path())
	}
	// After a failure the file may hold transactions that were answered
	// with an error: the checkpoint and the log stay, and the next start
	// recovers the last durable state from them.
	s.ckmu.Lock()
	if s.pin != nil {
		s.pin.Rollback()
		s.pin = nil
	}
	s.ckmu.Unlock()
	closeAll(append(s.log.seg[:], s.metaf, s.ckf))
	if s.log.aio != 0 {
		s.log.aio.destroy()
	}
	s.log, s.metaf, s.ckf = nil, nil, nil
	s.db.NoSync = false
	if err != nil {
		return fmt.Errorf("store: sync at close: %w", err)
	}
	return nil
}

// durable answers group, the writers of the transaction just committed
// (whose redo log is payload), once it is durable: its record is written
// and the log synced (see wal.sync). The committer does this itself: a
// separate syncer overlapping the next commit measured no faster, because
// the hand-offs between goroutines cost what the overlap saved. Nor did an
// asynchronous sync through Linux AIO (io_submit IOCB_CMD_FDSYNC) with the
// next transaction built meanwhile: commits took 255 µs instead of 320,
// but groups shrank from 2.4 writes to 1.8 and the rate stayed the same,
// because the requests, not the committer, then set the pace.
func (s *Store) durable(payload []byte, group []*pendingWrite) {
	if s.log == nil {
		answer(group, nil) // the commit synced the file
		return
	}
	w := s.log
	if !w.fits(len(payload)) {
		// No room left: a checkpoint covers this transaction instead of
		// a record, which therefore never exists.
		w.seq++
		answer(group, s.checkpoint(true))
		return
	}
	f, err := w.write(payload)
	if err == nil {
		began := time.Now()
		if err = w.sync(f); err != nil {
			err = fmt.Errorf("sync log: %w", err)
		}
		s.syncs.Add(1)
		s.logging.Add(int64(time.Since(began)))
	}
	if err != nil {
		answer(group, s.fail(err))
		return
	}
	answer(group, nil)
	s.dirty, s.logged = true, time.Now()
	if (w.off >= walCheckpointAt || time.Since(s.lastCheckpoint) >= walCheckpointEvery) && !s.checkpointRunning() {
		s.checkpoint(false) // a failure refuses later writes, not these
	}
}

// checkpoint makes the file durable as of the last commit and switches
// the log to the other segment. With wait it returns once that is done;
// otherwise the sync runs in the background and the committer goes on.
func (s *Store) checkpoint(wait bool) error {
	s.waitCheckpoint()
	w := s.log
	metas, err := readMetas(s.metaf, s.db.Info().PageSize)
	if err != nil {
		return s.fail(err)
	}
	pin, err := s.db.Begin(false)
	if err != nil {
		return s.fail(fmt.Errorf("pin the checkpoint: %w", err))
	}
	s.ckptN++
	c := checkpoint{epoch: w.epoch, n: s.ckptN, seq: w.seq, segment: 1 - w.active, metas: metas}
	w.active, w.off = c.segment, 0
	s.dirty, s.lastCheckpoint = false, time.Now()
	s.checkpoints.Add(1)
	done := make(chan struct{})
	s.ckmu.Lock()
	s.ckRunning = done
	s.ckmu.Unlock()
	run := func() error {
		defer close(done)
		err := s.db.Sync()
		if err == nil {
			err = writeCheckpoint(s.db.Path(), s.ckf, c)
		}
		s.ckmu.Lock()
		defer s.ckmu.Unlock()
		s.ckRunning = nil
		if err != nil {
			pin.Rollback() // the previous checkpoint stays the one to recover from
			return s.failLocked(fmt.Errorf("checkpoint: %w", err))
		}
		s.pin.Rollback()
		s.pin = pin
		return nil
	}
	if wait {
		return run()
	}
	go run()
	return nil
}

func (s *Store) checkpointRunning() bool {
	s.ckmu.Lock()
	defer s.ckmu.Unlock()
	return s.ckRunning != nil
}

func (s *Store) waitCheckpoint() {
	s.ckmu.Lock()
	ch := s.ckRunning
	s.ckmu.Unlock()
	if ch != nil {
		<-ch
	}
}

// fail records a failure of the log or of a checkpoint. The transaction
// concerned is committed in memory but may not be durable, so no write is
// accepted after it: a restart recovers the last durable state.
func (s *Store) fail(err error) error {
	s.ckmu.Lock()
	defer s.ckmu.Unlock()
	return s.failLocked(err)
}

func (s *Store) failLocked(err error) error {
	if s.broken == nil {
		s.broken = fmt.Errorf("%w: the write-ahead log failed, so writes are refused until the appliance restarts: %w", ErrUnavailable, err)
	}
	return s.broken
}

// refused returns the failure that stops writes, if any. Any goroutine.
func (s *Store) refused() error {
	s.ckmu.Lock()
	defer s.ckmu.Unlock()
	return s.broken
}

// idleCheckpoints checkpoints once writes have paused for walIdle, so that
// a quiet appliance's file is current and a restart replays nothing.
func (s *Store) idleCheckpoints(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(walIdle / 4)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if !s.becomeWriter() {
			continue
		}
		if s.log != nil && s.dirty && time.Since(s.logged) >= walIdle && !s.checkpointRunning() {
			s.checkpoint(false)
		}
		s.commitLoop() // commits what arrived meanwhile, then gives the role up
	}
}

// becomeWriter takes the writer role if nobody holds it. Any goroutine.
func (s *Store) becomeWriter() bool {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if s.committing || s.closed {
		return false
	}
	s.committing = true
	return true
}

// lockFile takes an exclusive lock on path (created if needed), waiting up
// to timeout, so that only one process recovers and opens the database.
func lockFile(path string, timeout time.Duration) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if err != syscall.EWOULDBLOCK || time.Now().After(deadline) {
			f.Close()
			return nil, errLocked
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var errLocked = errors.New("the file is locked by another process (is the appliance already running?)")

// metaTxid returns the transaction id of a bbolt meta page, and false if
// the page is not an intact meta page. The layout is bbolt's stable file
// format: a 16-byte page header, then magic, version, page size, flags,
// root bucket (16 bytes), freelist, high water mark, txid, and an FNV-64a
// checksum of what precedes it.
func metaTxid(page []byte) (uint64, bool) {
	if len(page) < 80 || binary.LittleEndian.Uint32(page[16:]) != 0xED0CDAED {
		return 0, false
	}
	h := fnv.New64a()
	h.Write(page[16:72])
	if h.Sum64() != binary.LittleEndian.Uint64(page[72:]) {
		return 0, false
	}
	return binary.LittleEndian.Uint64(page[64:]), true
}

// newestTxid is the highest txid among the intact meta pages in metas
// (two pages of equal size).
func newestTxid(metas []byte) (uint64, bool) {
	ps := len(metas) / 2
	var best uint64
	found := false
	for _, p := range [][]byte{metas[:ps], metas[ps:]} {
		if id, ok := metaTxid(p); ok && (!found || id > best) {
			best, found = id, true
		}
	}
	return best, found
}
