// Package store owns the appliance's persistence: the canonical user and group
// model, tenants and their credentials, every bbolt byte. Nothing else in the
// appliance imports bbolt.
//
// Every exported method takes a context, opens exactly one transaction and
// composes unexported helpers. Writes return only after their transaction
// is durable: committed, and its redo record synced to the write-ahead log
// (wal.go). Concurrent writers are grouped into one transaction, and so
// share one record and one log sync.
package store

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Sentinel errors. Callers test them with errors.Is.
var (
	// ErrNotFound is returned when a tenant, user, group or account does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict is returned when a write would break a uniqueness rule;
	// the error is a *ConflictError that names the attribute and the holder.
	ErrConflict = errors.New("conflict")
	// ErrPrecondition is returned when an expected version does not match.
	ErrPrecondition = errors.New("version mismatch")
	// ErrInvalid is returned for input the store cannot accept (an empty
	// userName, a member that does not exist, a bad tenant name).
	ErrInvalid = errors.New("invalid")
	// ErrClosed is returned by writes after Close.
	ErrClosed = errors.New("store closed")
	// ErrUnavailable is returned by writes after the write-ahead log or a
	// checkpoint failed: none is accepted until a restart recovers.
	ErrUnavailable = errors.New("store unavailable")
)

// ConflictError says which unique attribute collided and which resource
// already holds the value.
type ConflictError struct {
	Attribute string // SCIM attribute path, e.g. "userName"
	Value     string
	HolderID  string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%s %q is already used by %s", e.Attribute, e.Value, e.HolderID)
}

// Unwrap lets errors.Is(err, ErrConflict) hold.
func (e *ConflictError) Unwrap() error { return ErrConflict }

// Options tunes Open.
type Options struct {
	// Timeout bounds the wait for the file lock held by another process.
	// Zero means one second, so a second instance fails fast.
	Timeout time.Duration
	// Now returns the current time; tests may fix it. Nil means time.Now.
	Now func() time.Time
}

// Store is the appliance's database. It is safe for concurrent use.
type Store struct {
	db  *bolt.DB
	now func() time.Time

	mu       sync.RWMutex
	rules    map[string]Rules // per-tenant uniqueness rules
	watchers []func(Change)

	// tenants caches tenant records (read by every authenticated request);
	// every tenant write clears it before returning.
	tmu      sync.RWMutex
	tenants  map[string]Tenant
	accounts map[string]Account // tenant + "\x00" + name; read by every LDAP bind

	qmu        sync.Mutex
	queue      []*pendingWrite
	committing bool // the writer role: a committer is running
	closed     bool
	redo       redo // the committing transaction's redo log

	// The write-ahead log (wal.go, session.go). The writer role guards
	// log, metaf, dirty, logged and size; ckmu guards the rest.
	lock           *os.File // FILE-lock, held from Open to Close
	log            *wal     // nil: commits sync the file themselves
	metaf          *os.File // the database file, read for its meta pages
	ckf            *os.File // FILE-ckpt
	ckptN          uint64   // checkpoints begun in this session
	dirty          bool     // records appended since the last checkpoint began
	logged         time.Time
	lastCheckpoint time.Time
	size           int // the file's size after the last commit
	replayed       int // records replayed at Open
	stopIdle       chan struct{}
	idleDone       chan struct{}
	ckmu           sync.Mutex
	pin            *bolt.Tx      // read transaction at the last durable checkpoint
	ckRunning      chan struct{} // closed when the running checkpoint ends
	broken         error         // a failed log write or checkpoint

	// inflight is held shared by every write method from its start until
	// its watchers have been told, and exclusively by Quiesce.
	inflight sync.RWMutex
	// session is random per Open; with a transaction id it makes a stamp
	// no other process, and no other copy of the file, ever writes.
	session string
	// stats count the group commits and log syncs.
	commits, writes, busy, logging, syncs, checkpoints atomic.Int64
}

// pendingWrite is one writer waiting for the group commit.
type pendingWrite struct {
	fn   func(wtx) error
	done chan error
}

// answer gives every writer of group the outcome err.
func answer(group []*pendingWrite, err error) {
	for _, w := range group {
		w.done <- err
	}
}

// Change describes one committed write, for in-memory views (the LDAP
// directory) that must follow the store.
type Change struct {
	Tenant string
	Kind   Kind   // KindUser or KindGroup; "" when the whole tenant changed
	ID     string // resource id; "" when the whole tenant changed
}

// Open opens (creating if needed) the database file at path, migrates it to
// the current schema and returns the Store. It fails if the file was written
// by a newer version of the appliance or is locked by another process.
func Open(path string, opts Options) (*Store, error) {
	if opts.Timeout == 0 {
		opts.Timeout = time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	lock, err := lockFile(path+"-lock", opts.Timeout)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	s, err := open(path, opts, lock)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	return s, nil
}

// open recovers the file if it was not closed cleanly, opens it, migrates
// it and starts logging.
func open(path string, opts Options, lock *os.File) (*Store, error) {
	records, err := recoverLog(path)
	if err != nil {
		return nil, err
	}
	db, err := openBolt(path, opts.Timeout)
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, errLocked
		}
		return nil, err
	}
	s := &Store{db: db, now: opts.Now, rules: map[string]Rules{}, lock: lock, replayed: len(records)}
	var sid [12]byte
	rand.Read(sid[:])
	s.session = hex.EncodeToString(sid[:])
	if err := replay(db, records); err != nil {
		db.Close()
		return nil, fmt.Errorf("recover: %w", err)
	}
	if err := migrate(db); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.startSession(); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// openBolt opens the file with bbolt, which panics on some damage (a
// freelist page that is not one, say): that becomes an error naming it.
func openBolt(path string, timeout time.Duration) (db *bolt.DB, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("the database file is damaged (%v); restore a backup (see README)", p)
		}
	}()
	return bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout, FreelistType: bolt.FreelistArrayType, InitialMmapSize: mmapLimit})
}

// Replayed returns how many logged transactions Open replayed because the
// store was not closed cleanly.
func (s *Store) Replayed() int { return s.replayed }

// stamp records in tenant bucket tb that this transaction changes the
// tenant's users or groups. Every write method that does calls it; the
// stamp is written once per tenant and transaction, however many writers
// of the group call it.
func (s *Store) stamp(w wtx, tb bucket) error {
	name := string(tb.path[len(tb.path)-1])
	if slices.Contains(w.log.stamped, name) {
		return nil
	}
	if err := tb.Put(keyStamp, []byte(s.session+"/"+strconv.Itoa(w.ID()))); err != nil {
		return err
	}
	w.log.stamped = append(w.log.stamped, name)
	return nil
}

// Version returns a string that changes with every committed write, for
// noticing that the store is idle.
func (s *Store) Version(ctx context.Context) (string, error) {
	var v string
	err := s.view(ctx, func(tx *bolt.Tx) error {
		v = strconv.Itoa(tx.ID())
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("store: version: %w", err)
	}
	return v, nil
}

// TenantVersion returns the version of tenant t's users and groups: it
// changes with every write to them, and never repeats, even in a restored
// copy of the database that is written to again. A cache of the tenant
// (the LDAP view) records it to know later whether it is still current.
// Writes to the tenant's token or service accounts leave it alone. It is
// "" for a tenant never written to by this version of the appliance.
func (s *Store) TenantVersion(ctx context.Context, t string) (string, error) {
	var v string
	err := s.viewTenant(ctx, t, func(tb *bolt.Bucket) error {
		v = string(tb.Get(keyStamp))
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("store: tenant version: %w", err)
	}
	return v, nil
}

// Quiesce runs fn while no write is in flight: every write acknowledged
// before it has told its watchers, and writes wait until fn returns. A
// cache can then sync with the watchers' changes and record TenantVersion.
func (s *Store) Quiesce(fn func() error) error {
	s.inflight.Lock()
	defer s.inflight.Unlock()
	return fn()
}

// writing marks a write method in flight until the returned func runs;
// methods call it first and defer the result, so it covers the commit and
// the notification of watchers.
func (s *Store) writing() func() {
	s.inflight.RLock()
	return s.inflight.RUnlock
}

// Close waits for writes in flight, makes the file durable on its own and
// closes it. Writes after Close fail.
func (s *Store) Close() error {
	s.inflight.Lock()
	defer s.inflight.Unlock()
	s.qmu.Lock()
	if s.closed {
		s.qmu.Unlock()
		return nil
	}
	s.closed = true
	for s.committing { // the idle checkpointer may hold the role a moment
		s.qmu.Unlock()
		time.Sleep(time.Millisecond)
		s.qmu.Lock()
	}
	s.committing = true
	s.qmu.Unlock()
	err := s.endSession()
	if cerr := s.db.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("store: close: %w", cerr)
	}
	s.lock.Close()
	return err
}

// Path returns the database file's path.
func (s *Store) Path() string { return s.db.Path() }

// Watch registers fn to be called after every committed write. fn runs on
// the writer's goroutine and must not block or call back into the store's
// write methods.
func (s *Store) Watch(fn func(Change)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.watchers = append(s.watchers, fn)
}

func (s *Store) notify(c Change) {
	c.Tenant = strings.ToLower(c.Tenant)
	s.mu.RLock()
	ws := s.watchers
	s.mu.RUnlock()
	for _, fn := range ws {
		fn(c)
	}
}

// Backup writes a consistent copy of the whole database to w while the
// store keeps serving, and returns the number of bytes written.
func (s *Store) Backup(ctx context.Context, w io.Writer) (int64, error) {
	var n int64
	err := s.db.View(func(tx *bolt.Tx) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("store: backup: %w", err)
	}
	return n, nil
}

// update runs fn in a write transaction and returns once it is durable
// (see durable). Writers that arrive while a commit runs are grouped into
// the next transaction, so one log sync serves many of them, without any
// waiting when there is no concurrency (bbolt's Batch always waits its
// delay). fn may run more than once and must depend only on the
// transaction and on values computed before the call.
func (s *Store) update(ctx context.Context, fn func(wtx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	w := &pendingWrite{fn: fn, done: make(chan error, 1)}
	s.qmu.Lock()
	if s.closed {
		s.qmu.Unlock()
		return ErrClosed
	}
	s.queue = append(s.queue, w)
	if !s.committing {
		s.committing = true
		go s.commitLoop()
	}
	s.qmu.Unlock()
	return <-w.done
}

// commitLoop commits queued writes in groups until the queue is empty.
func (s *Store) commitLoop() {
	for {
		s.qmu.Lock()
		group := s.queue
		s.queue = nil
		if len(group) == 0 {
			s.committing = false
			s.qmu.Unlock()
			return
		}
		s.qmu.Unlock()
		s.commitGroup(group)
	}
}

// commitGroup runs the group's functions in order in one transaction. If
// one fails, the transaction is rolled back, that writer gets its error
// (it failed against the state its predecessors left, as if run alone
// after them) and the others are run again without it.
func (s *Store) commitGroup(group []*pendingWrite) {
	began := time.Now()
	defer func() { s.busy.Add(int64(time.Since(began))) }()
	if err := s.refused(); err != nil {
		answer(group, err)
		return
	}
	if s.log != nil && s.size+mmapMargin >= mmapLimit {
		if err := s.endSession(); err != nil { // the mapping must be free to grow
			s.fail(err)
		}
	}
	for len(group) > 0 {
		s.commits.Add(1)
		s.writes.Add(int64(len(group)))
		failed, ferr := -1, error(nil)
		s.redo.reset()
		err := s.db.Update(func(tx *bolt.Tx) error {
			w := wtx{tx: tx, log: &s.redo}
			for i, pw := range group {
				if err := safeRun(pw.fn, w); err != nil {
					failed, ferr = i, err
					return err
				}
			}
			s.size = int(tx.Size()) // before this commit's growth, which mmapMargin covers
			return nil
		})
		if err == nil {
			s.durable(s.redo.buf, group)
			return
		}
		if failed < 0 { // the commit itself failed
			answer(group, err)
			return
		}
		group[failed].done <- ferr
		group = append(group[:failed:failed], group[failed+1:]...)
	}
}

// CommitStats describes the group commits since Open: how many writes
// each transaction carried, how long the committer was busy, and how many
// pages the transactions wrote. Benchmarks report them to show where
// durable writes spend their time.
type CommitStats struct {
	Commits     int64         // write transactions, retries after a failed writer included
	Writes      int64         // writer functions they ran
	Busy        time.Duration // time inside commits: running writers, writing pages, logging
	Logging     time.Duration // of which syncing the log
	Syncs       int64         // log syncs
	Pages       int64         // pages allocated by write transactions
	Checkpoints int64
}

// CommitStats returns the counts since Open.
func (s *Store) CommitStats() CommitStats {
	db := s.db.Stats()
	return CommitStats{Commits: s.commits.Load(), Writes: s.writes.Load(), Busy: time.Duration(s.busy.Load()),
		Logging: time.Duration(s.logging.Load()), Syncs: s.syncs.Load(), Pages: db.TxStats.GetPageCount(), Checkpoints: s.checkpoints.Load()}
}

// safeRun turns a panic in a write function into an error for that writer
// alone, so one bad request cannot take down the committer.
func safeRun(fn func(wtx) error, tx wtx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("write panicked: %v", p)
		}
	}()
	return fn(tx)
}

// viewTenant runs fn in a read transaction on tenant t's bucket; an
// unknown tenant is ErrNotFound.
func (s *Store) viewTenant(ctx context.Context, t string, fn func(tb *bolt.Bucket) error) error {
	return s.view(ctx, func(tx *bolt.Tx) error {
		tb, err := tenantBucket(tx, t)
		if err != nil {
			return err
		}
		return fn(tb)
	})
}

// updateTenant runs fn in a write transaction (see update) on tenant t's
// bucket, for writes to its users and groups: it also stamps the tenant's
// version (see TenantVersion).
func (s *Store) updateTenant(ctx context.Context, t string, fn func(tb bucket) error) error {
	return s.update(ctx, func(w wtx) error {
		tb, err := tenantBucketW(w, t)
		if err != nil {
			return err
		}
		if err := s.stamp(w, tb); err != nil {
			return err
		}
		return fn(tb)
	})
}

func (s *Store) view(ctx context.Context, fn func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(fn)
}

// NewID returns a fresh resource id: a version 7 UUID (RFC 9562) whose
// 12-bit rand_a field counts ids made in the same millisecond, so ids sort
// strictly by creation (listings come back in creation order and inserts
// append to the B+tree), and 62 random bits make reuse practically
// impossible.
func NewID() string {
	var b [16]byte
	rand.Read(b[:]) // never fails: crypto/rand aborts the process instead
	idMu.Lock()
	ms := uint64(time.Now().UnixMilli())
	if ms <= idLastMS {
		ms = idLastMS
		idSeq++
		if idSeq > 0xfff { // 4096 ids in one millisecond: borrow the next one
			ms++
			idSeq = 0
		}
	} else {
		idSeq = uint64(b[6]&0x03)<<8 | uint64(b[7]) // random start, room to count
	}
	idLastMS = ms
	seq := idSeq
	idMu.Unlock()
	b[0], b[1], b[2], b[3], b[4], b[5] = byte(ms>>40), byte(ms>>32), byte(ms>>24), byte(ms>>16), byte(ms>>8), byte(ms)
	b[6] = 0x70 | byte(seq>>8)
	b[7] = byte(seq)
	b[8] = (b[8] & 0x3f) | 0x80
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:], b[10:])
	return string(out[:])
}

var (
	idMu     sync.Mutex
	idLastMS uint64
	idSeq    uint64
)

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

// ReleaseMemory tells the kernel that the database's mapped pages need not
// stay resident in this process. They stay in the page cache and fault back
// in when read. The LDAP directory calls it after loading a tenant: a full
// scan touches every page once, and nothing reads most of them again, as
// searches are served from memory.
func (s *Store) ReleaseMemory() error {
	return s.db.View(func(tx *bolt.Tx) error { // holds off a remap meanwhile
		info := s.db.Info()
		_, _, errno := syscall.Syscall(syscall.SYS_MADVISE, info.Data, uintptr(tx.Size()), syscall.MADV_DONTNEED)
		if errno != 0 {
			return fmt.Errorf("store: release memory: %w", errno)
		}
		return nil
	})
}
