package store

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// logSettings sets the log's tunables for one test.
func logSettings(t *testing.T, segment int64, every, idle time.Duration) {
	t.Helper()
	oldSeg, oldAt, oldEvery, oldIdle := walSegmentSize, walCheckpointAt, walCheckpointEvery, walIdle
	walSegmentSize, walCheckpointAt, walCheckpointEvery, walIdle = segment, segment/4, every, idle
	t.Cleanup(func() {
		walSegmentSize, walCheckpointAt, walCheckpointEvery, walIdle = oldSeg, oldAt, oldEvery, oldIdle
	})
}

// asWriter runs fn holding the writer role with no checkpoint running: no
// file of the store changes meanwhile.
func asWriter(s *Store, fn func()) {
	for !s.becomeWriter() {
		time.Sleep(time.Millisecond)
	}
	s.waitCheckpoint()
	fn()
	s.commitLoop()
}

// storeFiles lists the files that make up the store at path.
func storeFiles(path string) []string {
	return []string{path, checkpointPath(path), segmentPath(path, 0), segmentPath(path, 1)}
}

// crashCopy copies the store's files as a kill -9 leaves them: what the
// process wrote is in the page cache, whether synced or not.
func crashCopy(t *testing.T, s *Store, dir string) string {
	t.Helper()
	dst := filepath.Join(dir, filepath.Base(s.Path()))
	asWriter(s, func() {
		for i, src := range storeFiles(s.Path()) {
			data, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(storeFiles(dst)[i], data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	})
	return dst
}

// provision writes users in 8 goroutines; names are prefix + number.
func provision(t *testing.T, s *Store, prefix string, n int) []User {
	t.Helper()
	out := make([]User, n)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				u, err := s.CreateUser(context.Background(), "acme", User{UserName: fmt.Sprintf("%s%04d@contoso.com", prefix, i), Active: true,
					Emails: []MultiValue{{Value: fmt.Sprintf("%s%04d@contoso.com", prefix, i), Type: "work"}}})
				if err != nil {
					t.Error(err)
					return
				}
				out[i] = u
			}
		}()
	}
	wg.Wait()
	return out
}

// directory returns every user as "userName title", sorted, after
// checking the file with bbolt's consistency check and that the userName
// index finds each user.
func directory(t *testing.T, s *Store) []string {
	t.Helper()
	err := s.db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("consistency check: %v", err)
	}
	var out []string
	err = s.ScanUsers(context.Background(), "acme", func(u *User) error {
		out = append(out, u.UserName+" "+u.Title)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range out {
		name := strings.Fields(e)[0]
		got, err := s.LookupUsers(context.Background(), "acme", IndexUserName, name)
		if err != nil || len(got) != 1 {
			t.Fatalf("lookup %s: %v, %d users", name, err, len(got))
		}
	}
	slices.Sort(out)
	return out
}

// reopen opens the store at path, to be closed when the test ends.
func reopen(t *testing.T, path string) *Store {
	t.Helper()
	c, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sameDirectory fails the test unless c holds exactly the users in want.
func sameDirectory(t *testing.T, c *Store, want []string, when string) {
	t.Helper()
	if got := directory(t, c); !slices.Equal(got, want) {
		t.Fatalf("%s: %d users; want %d", when, len(got), len(want))
	}
}

// churn deletes every fifth user and gives every third one a title.
func churn(t *testing.T, s *Store, users []User) {
	t.Helper()
	ctx := context.Background()
	for i, u := range users {
		switch {
		case i%5 == 0:
			if err := s.DeleteUser(ctx, "acme", u.ID); err != nil {
				t.Fatal(err)
			}
		case i%3 == 0:
			if _, err := s.UpdateUser(ctx, "acme", u.ID, 0, func(x *User) error { x.Title = "Engineer"; return nil }); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestCrashRecoveryReplaysTheLog(t *testing.T) {
	logSettings(t, 1<<20, time.Hour, time.Hour)
	s, _ := openTest(t)
	users := provision(t, s, "a", 300)
	churn(t, s, users)
	want := directory(t, s)
	copyPath := crashCopy(t, s, t.TempDir())

	c, err := Open(copyPath, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Replayed() == 0 {
		t.Errorf("nothing replayed: the writes were expected in the log")
	}
	if got := directory(t, c); !slices.Equal(got, want) {
		t.Fatalf("after recovery %d users; want %d", len(got), len(want))
	}
	if _, err := c.CreateUser(context.Background(), "acme", User{UserName: "after@contoso.com"}); err != nil {
		t.Fatalf("write after recovery: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(checkpointPath(copyPath)); !os.IsNotExist(err) {
		t.Fatalf("checkpoint file after a clean close: %v", err)
	}
	c, err = Open(copyPath, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Replayed() != 0 {
		t.Errorf("replayed %d records after a clean close", c.Replayed())
	}
	if got := directory(t, c); len(got) != len(want)+1 {
		t.Fatalf("after reopen %d users; want %d", len(got), len(want)+1)
	}
}

// TestPowerLossKeepsEveryAcknowledgedWrite simulates power cuts: the
// database file is as the last checkpoint synced it, plus any subset of
// the pages written since (the kernel writes dirty pages back in any
// order), meta pages included. Recovery must find every acknowledged
// write, and a consistent file.
func TestPowerLossKeepsEveryAcknowledgedWrite(t *testing.T) {
	logSettings(t, 4<<20, time.Hour, time.Hour)
	s, path := openTest(t)
	users := provision(t, s, "a", 200)
	var base []byte
	asWriter(s, func() {
		if err := s.checkpoint(true); err != nil {
			t.Fatal(err)
		}
		var err error
		if base, err = os.ReadFile(path); err != nil {
			t.Fatal(err)
		}
	})
	churn(t, s, users)
	provision(t, s, "b", 300)
	want := directory(t, s)
	crashed := crashCopy(t, s, t.TempDir())
	final, err := os.ReadFile(crashed)
	if err != nil {
		t.Fatal(err)
	}
	ps := os.Getpagesize()
	for trial := range 12 {
		r := rand.New(rand.NewPCG(uint64(trial), 7))
		img := make([]byte, len(final))
		for off := 0; off < len(final); off += ps {
			page := final[off : off+ps]
			switch {
			case trial == 0: // nothing written since the checkpoint reached the disk
				page = nil
			case trial == 1: // everything did
			case r.IntN(2) == 0:
				page = nil
			}
			if page == nil && off+ps <= len(base) {
				page = base[off : off+ps]
			}
			copy(img[off:], page) // else never written: zeros
		}
		dir := t.TempDir()
		dst := filepath.Join(dir, "scimldap.db")
		for i, src := range storeFiles(crashed) {
			data, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				data = img
			}
			if err := os.WriteFile(storeFiles(dst)[i], data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		c, err := Open(dst, Options{})
		if err != nil {
			t.Fatalf("trial %d: open: %v", trial, err)
		}
		if got := directory(t, c); !slices.Equal(got, want) {
			t.Fatalf("trial %d: %d users after recovery; want %d", trial, len(got), len(want))
		}
		c.Close()
	}
}

func TestTornLogTailIsIgnored(t *testing.T) {
	logSettings(t, 1<<20, time.Hour, time.Hour)
	s, _ := openTest(t)
	provision(t, s, "a", 40)
	want := directory(t, s)
	var last, lastOff int64
	asWriter(s, func() { last, lastOff = int64(s.log.active), s.log.off })
	if _, err := s.CreateUser(context.Background(), "acme", User{UserName: "torn@contoso.com"}); err != nil {
		t.Fatal(err)
	}
	copyPath := crashCopy(t, s, t.TempDir())
	// Tear the last record: its first bytes reached the disk, the rest not.
	seg := segmentPath(copyPath, int(last))
	f, err := os.OpenFile(seg, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 64), lastOff+recordHeader+8); err != nil {
		t.Fatal(err)
	}
	f.Close()
	sameDirectory(t, reopen(t, copyPath), want, "after a torn tail")
}

func TestFullSegmentIsCoveredByACheckpoint(t *testing.T) {
	logSettings(t, 64<<10, time.Hour, time.Hour)
	s, _ := openTest(t)
	// Each record is a few KB: the segments fill and switch many times,
	// and a record larger than a segment is covered by a checkpoint.
	users := provision(t, s, "a", 120)
	big := strings.Repeat("x", 100<<10)
	if _, err := s.UpdateUser(context.Background(), "acme", users[1].ID, 0, func(u *User) error { u.Title = big[:50<<10]; u.NickName = big[50<<10:]; return nil }); err != nil {
		t.Fatal(err)
	}
	churn(t, s, users)
	want := directory(t, s)
	if s.checkpoints.Load() < 3 {
		t.Fatalf("%d checkpoints; the small segments should have forced several", s.checkpoints.Load())
	}
	sameDirectory(t, reopen(t, crashCopy(t, s, t.TempDir())), want, "after recovery")
}

func TestRestoredOlderFileIsRefused(t *testing.T) {
	logSettings(t, 1<<20, time.Hour, time.Hour)
	s, _ := openTest(t)
	provision(t, s, "a", 20)
	var backup bytes.Buffer
	if _, err := s.Backup(context.Background(), &backup); err != nil {
		t.Fatal(err)
	}
	provision(t, s, "b", 20)
	asWriter(s, func() {
		if err := s.checkpoint(true); err != nil {
			t.Fatal(err)
		}
	})
	provision(t, s, "c", 20)
	copyPath := crashCopy(t, s, t.TempDir())
	if err := os.WriteFile(copyPath, backup.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(copyPath, Options{})
	if err == nil || !strings.Contains(err.Error(), "older than its checkpoint") || !strings.Contains(err.Error(), "-ckpt") {
		t.Fatalf("open of an older file under a newer checkpoint: %v; want a refusal naming the checkpoint file", err)
	}
	if err := os.Remove(checkpointPath(copyPath)); err != nil {
		t.Fatal(err)
	}
	c, err := Open(copyPath, Options{})
	if err != nil {
		t.Fatalf("open of the restored backup without the checkpoint: %v", err)
	}
	defer c.Close()
	if got := directory(t, c); len(got) != 20 {
		t.Fatalf("restored backup holds %d users; want 20", len(got))
	}
}

func TestIdleCheckpointLeavesNothingToReplay(t *testing.T) {
	logSettings(t, 1<<20, time.Hour, 50*time.Millisecond)
	s, _ := openTest(t)
	provision(t, s, "a", 30)
	before := s.checkpoints.Load()
	deadline := time.Now().Add(5 * time.Second)
	for s.checkpoints.Load() == before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if s.checkpoints.Load() == before {
		t.Fatal("no checkpoint after the writes went quiet")
	}
	c, err := Open(crashCopy(t, s, t.TempDir()), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Replayed() != 0 {
		t.Errorf("replayed %d records after an idle checkpoint", c.Replayed())
	}
	if got := directory(t, c); len(got) != 30 {
		t.Fatalf("%d users; want 30", len(got))
	}
}

// TestLargeDatabaseCommitsWithoutTheLog: near the size of bbolt's mapping
// the store stops logging, and every commit syncs the file itself.
func TestLargeDatabaseCommitsWithoutTheLog(t *testing.T) {
	logSettings(t, 1<<20, time.Hour, time.Hour)
	old := mmapLimit
	mmapLimit = mmapMargin + 1<<20 // the margin plus 1 MiB of database
	t.Cleanup(func() { mmapLimit = old })
	s, path := openTest(t)
	provision(t, s, "a", 400) // passes 1 MiB
	asWriter(s, func() {
		if s.log != nil {
			t.Error("still logging past the limit")
		}
	})
	if _, err := os.Stat(checkpointPath(path)); !os.IsNotExist(err) {
		t.Fatalf("checkpoint file without a log: %v", err)
	}
	want := directory(t, s)
	sameDirectory(t, reopen(t, crashCopyDB(t, s)), want, "after a crash without the log")
}

// crashCopyDB copies only the database file, all there is without a log.
func crashCopyDB(t *testing.T, s *Store) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "scimldap.db")
	asWriter(s, func() {
		data, err := os.ReadFile(s.Path())
		if err == nil {
			err = os.WriteFile(dst, data, 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
	})
	return dst
}

func TestRedoRoundTrip(t *testing.T) {
	var r redo
	r.add(opCreateBucket, [][]byte{[]byte("tenants")}, []byte("t1"), nil)
	r.add(opPut, [][]byte{[]byte("tenants"), []byte("t1")}, []byte("k"), []byte("v"))
	r.add(opPut, [][]byte{[]byte("tenants"), []byte("t1")}, []byte("empty"), nil)
	r.add(opDelete, [][]byte{[]byte("tenants"), []byte("t1")}, []byte("k"), nil)
	r.add(opDeleteBucket, [][]byte{[]byte("tenants")}, []byte("t1"), nil)
	var got []string
	err := decodeRedo(r.buf, func(o redoOp) error {
		got = append(got, fmt.Sprintf("%d %s %s=%s", o.op, bytes.Join(o.path, []byte("/")), o.key, o.value))
		return nil
	})
	want := []string{"3 tenants t1=", "1 tenants/t1 k=v", "1 tenants/t1 empty=", "2 tenants/t1 k=", "4 tenants t1="}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("decode = %q, %v; want %q", got, err, want)
	}
	for _, bad := range [][]byte{{9}, {opPut, 0}, {opPut, 1, 5, 'a'}, {opPut, 1, 1, 'a', 1, 'k', 3}} {
		if err := decodeRedo(bad, func(redoOp) error { return nil }); err == nil {
			t.Errorf("decode %v: no error", bad)
		}
	}
}

func TestCheckpointEncoding(t *testing.T) {
	c := checkpoint{epoch: 42, n: 3, seq: 7, segment: 1, metas: bytes.Repeat([]byte{1, 2}, 4096)}
	got, err := decodeCheckpoint(c.encode())
	if err != nil || got.epoch != 42 || got.n != 3 || got.seq != 7 || got.segment != 1 || !bytes.Equal(got.metas, c.metas) {
		t.Fatalf("round trip = %+v, %v", got, err)
	}
	enc := c.encode()
	enc[20] ^= 1
	if _, err := decodeCheckpoint(enc); err == nil {
		t.Fatal("a flipped bit went unnoticed")
	}
	// Two slots: the newer intact one wins; a torn newer one loses.
	older, newer := c, c
	older.n, newer.n = 2, 3
	file := append(newer.encode(), older.encode()...)
	if got, err := decodeCheckpoints(file); err != nil || got.n != 3 {
		t.Fatalf("newest of two = %d, %v; want 3", got.n, err)
	}
	file[10] ^= 1
	if got, err := decodeCheckpoints(file); err != nil || got.n != 2 {
		t.Fatalf("with the newer slot torn = %d, %v; want 2", got.n, err)
	}
	if _, err := decodeCheckpoints(make([]byte, len(file))); err == nil {
		t.Fatal("two zeroed slots decoded")
	}
}

func FuzzDecodeRedo(f *testing.F) {
	var r redo
	r.add(opPut, [][]byte{[]byte("tenants"), []byte("t")}, []byte("k"), []byte("v"))
	r.add(opDelete, [][]byte{[]byte("tenants")}, []byte("k"), nil)
	f.Add(r.buf)
	f.Add([]byte{opCreateBucket, 1, 7, 't', 'e', 'n', 'a', 'n', 't', 's', 1, 'x'})
	db, err := bolt.Open(filepath.Join(f.TempDir(), "db"), 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	defer db.Close()
	db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucket([]byte("tenants"))
		return err
	})
	f.Fuzz(func(t *testing.T, payload []byte) {
		n := 0
		if decodeRedo(payload, func(redoOp) error { n++; return nil }) != nil {
			return
		}
		// A well-formed record applies or fails cleanly; never panics.
		tx, err := db.Begin(true)
		if err != nil {
			t.Fatal(err)
		}
		applyRedo(tx, payload)
		tx.Rollback()
	})
}

func FuzzReadLog(f *testing.F) {
	f.Add(appendRecord(nil, 1, 1, []byte("payload")), uint64(0))
	f.Add(append(appendRecord(nil, 1, 1, []byte("a")), appendRecord(nil, 1, 2, nil)...), uint64(0))
	f.Add(checkpoint{epoch: 1, metas: make([]byte, 64)}.encode(), uint64(1))
	f.Fuzz(func(t *testing.T, data []byte, seq uint64) {
		decodeCheckpoints(data)
		half := len(data) / 2
		segs := [2]io.ReaderAt{bytes.NewReader(data[:half]), bytes.NewReader(data[half:])}
		for _, rec := range readLog(segs, int64(half), 1, seq, 0) {
			if len(rec) > len(data) {
				t.Fatalf("record of %d bytes from %d bytes of log", len(rec), len(data))
			}
		}
	})
}

// TestLogFailureRefusesWritesAndRecovers: a write whose record cannot be
// logged is answered with an error, later writes are refused, and the next
// start recovers the last durable state, without the failed write.
func TestLogFailureRefusesWritesAndRecovers(t *testing.T) {
	logSettings(t, 1<<20, time.Hour, time.Hour)
	s, path := openTest(t)
	provision(t, s, "a", 10)
	want := directory(t, s)
	asWriter(s, func() { s.log.seg[s.log.active].Close() }) // the next record cannot be written
	ctx := context.Background()
	if _, err := s.CreateUser(ctx, "acme", User{UserName: "lost@contoso.com"}); err == nil || !strings.Contains(err.Error(), "write-ahead log failed") {
		t.Fatalf("write with a broken log: %v; want the log failure", err)
	}
	if _, err := s.CreateUser(ctx, "acme", User{UserName: "later@contoso.com"}); err == nil || !strings.Contains(err.Error(), "until the appliance restarts") {
		t.Fatalf("write after the failure: %v; want a refusal", err)
	}
	if err := s.Close(); err == nil {
		t.Fatal("Close after a log failure reported no error")
	}
	if _, err := os.Stat(checkpointPath(path)); err != nil {
		t.Fatalf("the checkpoint must stay after a failure: %v", err)
	}
	sameDirectory(t, reopen(t, path), want, "after recovery")
}

// TestLogSyncEveryWay checks the ways wal.sync syncs the log: through AIO
// with the P kept for a while, or only briefly, or not at all (one P);
// with fdatasync where there is no AIO or it is refused. Each must report
// a failed sync.
func TestLogSyncEveryWay(t *testing.T) {
	if _, err := newAIO(); err != nil {
		t.Skipf("no AIO here: %v", err)
	}
	for _, tc := range []struct {
		name    string
		aio     string // "yes", "no", or "refused": a context the kernel does not know
		procs   int
		closed  bool
		wantAIO bool // still set after the sync
	}{
		{"aio", "yes", 2, false, true},
		{"aio, one P", "yes", 1, false, true},
		{"aio, failing", "yes", 2, true, false},
		{"fdatasync", "no", 2, false, false},
		{"fdatasync, failing", "no", 2, true, false},
		{"aio refused", "refused", 2, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(tc.procs))
			f, err := os.Create(filepath.Join(t.TempDir(), "seg"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.Write([]byte("record")); err != nil {
				t.Fatal(err)
			}
			w := &wal{}
			switch tc.aio {
			case "yes":
				if w.aio, err = newAIO(); err != nil {
					t.Fatal(err)
				}
				defer func() {
					if w.aio != 0 {
						w.aio.destroy()
					}
				}()
			case "refused":
				w.aio = aioContext(1)
			}
			if tc.closed {
				f.Close()
			}
			err = w.sync(f)
			if tc.closed != (err != nil) {
				t.Fatalf("sync: %v, want an error: %v", err, tc.closed)
			}
			if (w.aio != 0) != tc.wantAIO {
				t.Errorf("AIO context after the sync: %v, want it kept: %v", w.aio, tc.wantAIO)
			}
		})
	}
}

// TestAIOWaitPastTheKeptTime waits for syncs that outlast the time the P
// is kept, so that the wait goes on the ordinary way.
func TestAIOWaitPastTheKeptTime(t *testing.T) {
	c, err := newAIO()
	if err != nil {
		t.Skipf("no AIO here: %v", err)
	}
	defer c.destroy()
	f, err := os.Create(filepath.Join(t.TempDir(), "seg"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i, keep := range []time.Duration{0, time.Nanosecond, time.Microsecond, time.Second} {
		if _, err := f.WriteAt(bytes.Repeat([]byte{byte(i)}, 64<<10), int64(i)<<16); err != nil {
			t.Fatal(err)
		}
		if err := c.submitFdsync(f.Fd()); err != nil {
			t.Fatal(err)
		}
		if err := c.wait(keep); err != nil {
			t.Errorf("wait keeping the P %v: %v", keep, err)
		}
	}
}
