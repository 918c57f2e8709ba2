package ldap

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// A view snapshot is a tenant's user entries as built, written at
// shutdown and once writes pause (saveWhenQuiet), so that the next start,
// even after a crash, serves LDAP without decoding and mapping every
// stored user again. A snapshot is used only when it certainly equals what
// a full load would build:
//
//   - the tenant's users and groups are at the version the snapshot
//     recorded (store.TenantVersion), read after the view began to follow
//     the store's changes, so nothing is missed in between;
//   - the tenant's mapping options have the same fingerprint;
//   - the same executable wrote it (entry building may change between
//     builds).
//
// Otherwise, or if the file is damaged, the view is built from the store.
// Groups are always read from the store (there are few), so only users
// are kept.
//
// Layout: magic, then uvarints and length-prefixed strings:
//
//	format tenant storeVersion options binary
//	nAttrs name…  nUsers nRefs nVals
//	per user: key manager visible dn ndn nUser nRefs (attr n)… value…
//	CRC-32C of everything before, 4 bytes little-endian
const (
	snapMagic  = "scimldap LDAP view\n"
	snapFormat = 1
	snapSuffix = ".view"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// snapKey is what a snapshot must match to be used.
type snapKey struct {
	tenant, storeVersion, options, binary string
}

// executableHash identifies the running build; "" disables snapshots.
var executableHash = sync.OnceValue(func() string {
	path, err := os.Executable()
	if err != nil {
		return ""
	}
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))
})

func snapPath(dir, tenant string) string { return filepath.Join(dir, tenant+snapSuffix) }

// snapWriter encodes into a buffer that it flushes to the file and the
// checksum as it fills.
type snapWriter struct {
	ctx context.Context
	f   io.Writer
	crc hash.Hash32
	buf []byte
	err error
}

func (w *snapWriter) uvarint(x uint64) { w.buf = binary.AppendUvarint(w.buf, x) }

func (w *snapWriter) str(s string) {
	w.uvarint(uint64(len(s)))
	w.buf = append(w.buf, s...)
	if len(w.buf) >= 1<<20 {
		w.flush()
	}
}

func (w *snapWriter) flush() {
	if w.err == nil {
		w.err = w.ctx.Err()
	}
	if w.err == nil {
		w.crc.Write(w.buf)
		_, w.err = w.f.Write(w.buf)
	}
	w.buf = w.buf[:0]
}

// capture copies the state of v's users, in the order a snapshot keeps
// them: visible users in key order, so a load needs no sort, hidden ones
// after. Entries never change once placed, so the copy can be written
// after the view and the store move on.
func (v *view) capture() []userState {
	v.mu.RLock()
	defer v.mu.RUnlock()
	users := make([]userState, 0, len(v.users))
	for _, e := range v.userList {
		users = append(users, *v.users[e.key[1:]])
	}
	for _, us := range v.users {
		if !us.visible {
			users = append(users, *us)
		}
	}
	return users
}

// writeSnapshot writes users (from capture) to dir, atomically replacing
// an earlier snapshot. key.storeVersion is the version they reflect.
func writeSnapshot(ctx context.Context, dir string, key snapKey, users []userState) (err error) {
	attrIdx := map[*attrType]uint64{}
	var names []string
	var nRefs, nVals uint64
	for _, us := range users {
		for _, r := range us.e.refs {
			if _, ok := attrIdx[r.t]; !ok {
				attrIdx[r.t] = uint64(len(names))
				names = append(names, r.t.name)
			}
		}
		nRefs += uint64(len(us.e.refs))
		nVals += uint64(len(us.e.vals))
	}

	f, err := os.CreateTemp(dir, key.tenant+".tmp*")
	if err != nil {
		return fmt.Errorf("save LDAP view of %s: %w", key.tenant, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	w := &snapWriter{ctx: ctx, f: f, crc: crc32.New(castagnoli), buf: make([]byte, 0, 1<<20+64<<10)}
	w.buf = append(w.buf, snapMagic...)
	w.uvarint(snapFormat)
	for _, s := range []string{key.tenant, key.storeVersion, key.options, key.binary} {
		w.str(s)
	}
	w.uvarint(uint64(len(names)))
	for _, n := range names {
		w.str(n)
	}
	w.uvarint(uint64(len(users)))
	w.uvarint(nRefs)
	w.uvarint(nVals)
	for i := range users {
		us := &users[i]
		e := us.e
		w.str(e.key)
		w.str(us.manager)
		if us.visible {
			w.uvarint(1)
		} else {
			w.uvarint(0)
		}
		w.str(e.dn)
		w.str(e.ndn)
		w.uvarint(uint64(e.nUser))
		w.uvarint(uint64(len(e.refs)))
		for _, r := range e.refs {
			w.uvarint(attrIdx[r.t])
			w.uvarint(uint64(r.n))
		}
		for _, val := range e.vals {
			w.str(val)
		}
		if w.err != nil {
			return fmt.Errorf("save LDAP view of %s: %w", key.tenant, w.err)
		}
	}
	w.flush()
	if w.err != nil {
		return fmt.Errorf("save LDAP view of %s: %w", key.tenant, w.err)
	}
	if err := binary.Write(f, binary.LittleEndian, w.crc.Sum32()); err != nil {
		return fmt.Errorf("save LDAP view of %s: %w", key.tenant, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("save LDAP view of %s: %w", key.tenant, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save LDAP view of %s: %w", key.tenant, err)
	}
	if err := os.Rename(f.Name(), snapPath(dir, key.tenant)); err != nil {
		return fmt.Errorf("save LDAP view of %s: %w", key.tenant, err)
	}
	if d, err := os.Open(dir); err == nil { // make the rename durable
		d.Sync()
		d.Close()
	}
	return nil
}

// snapReader decodes a snapshot held in one string; the strings it
// returns share that memory, so a load makes no per-value copies.
type snapReader struct {
	s   string
	off int
	err error
}

var errSnapDamaged = errors.New("damaged snapshot")

func (r *snapReader) uvarint() uint64 {
	var x uint64
	for shift := 0; shift < 64; shift += 7 {
		if r.off >= len(r.s) {
			r.err = errSnapDamaged
			return 0
		}
		c := r.s[r.off]
		r.off++
		x |= uint64(c&0x7f) << shift
		if c < 0x80 {
			return x
		}
	}
	r.err = errSnapDamaged
	return 0
}

// count reads a count that cannot exceed the bytes left.
func (r *snapReader) count() int {
	n := r.uvarint()
	if n > uint64(len(r.s)-r.off) {
		r.err = errSnapDamaged
		return 0
	}
	return int(n)
}

func (r *snapReader) str() string {
	n := r.count()
	if r.err != nil {
		return ""
	}
	s := r.s[r.off : r.off+n]
	r.off += n
	return s
}

// snapUsers is a decoded snapshot: every user's state and entry, in slabs.
type snapUsers struct {
	states  []userState
	entries []entry
	ids     []string
}

// readSnapshot decodes the snapshot at path if it matches key. It returns
// (nil, nil) when there is none or it does not match.
func readSnapshot(path string, key snapKey) (*snapUsers, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// The key comes first: a snapshot for another version is not read whole.
	head := make([]byte, 4096)
	n, _ := io.ReadFull(f, head)
	hr := &snapReader{s: string(head[:n]), off: len(snapMagic)}
	if n < len(snapMagic) || hr.s[:len(snapMagic)] != snapMagic {
		return nil, errSnapDamaged
	}
	if hr.uvarint() != snapFormat {
		return nil, nil
	}
	if got := (snapKey{tenant: hr.str(), storeVersion: hr.str(), options: hr.str(), binary: hr.str()}); hr.err == nil && got != key {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return decodeSnapshot(data, key)
}

// decodeSnapshot decodes a whole snapshot file's bytes if they match key,
// returning (nil, nil) when they do not. The strings it returns share data.
func decodeSnapshot(data []byte, key snapKey) (*snapUsers, error) {
	if len(data) < len(snapMagic)+4 || string(data[:len(snapMagic)]) != snapMagic {
		return nil, errSnapDamaged
	}
	body := data[:len(data)-4]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(data[len(body):]) {
		return nil, fmt.Errorf("%w: checksum mismatch", errSnapDamaged)
	}
	// The buffer is never written again, so strings may share it.
	r := &snapReader{s: unsafe.String(unsafe.SliceData(body), len(body)), off: len(snapMagic)}
	if r.uvarint() != snapFormat {
		return nil, nil
	}
	got := snapKey{tenant: r.str(), storeVersion: r.str(), options: r.str(), binary: r.str()}
	if r.err != nil {
		return nil, r.err
	}
	if got != key {
		return nil, nil
	}
	types := make([]*attrType, r.count())
	for i := range types {
		types[i] = registerAttr(r.str())
	}
	n, nRefs, nVals := r.count(), r.count(), r.count()
	if r.err != nil {
		return nil, r.err
	}
	su := &snapUsers{states: make([]userState, n), entries: make([]entry, n), ids: make([]string, n)}
	refs := make([]attrRef, nRefs)
	vals := make([]string, nVals)
	for i := 0; i < n && r.err == nil; i++ {
		e := &su.entries[i]
		e.key = r.str()
		manager := r.str()
		visible := r.uvarint() == 1
		e.dn, e.ndn = r.str(), r.str()
		e.nUser = r.count()
		nr := r.count()
		if nr > len(refs) || e.nUser > nr || len(e.key) < 2 || e.key[0] != '1' {
			return nil, errSnapDamaged
		}
		e.refs, refs = refs[:nr:nr], refs[nr:]
		nv := 0
		for j := range e.refs {
			ti, cnt := r.uvarint(), r.uvarint()
			if ti >= uint64(len(types)) || cnt > uint64(len(vals)-nv) || nv+int(cnt) > 0xffff {
				return nil, errSnapDamaged
			}
			e.refs[j] = attrRef{t: types[ti], off: uint16(nv), n: uint16(cnt)}
			nv += int(cnt)
		}
		e.vals, vals = vals[:nv:nv], vals[nv:]
		for j := range e.vals {
			e.vals[j] = r.str()
		}
		su.ids[i] = e.key[1:]
		su.states[i] = userState{e: e, visible: visible, manager: manager}
	}
	if r.err != nil {
		return nil, r.err
	}
	if r.off != len(r.s) {
		return nil, fmt.Errorf("%w: %d bytes after the last entry", errSnapDamaged, len(r.s)-r.off)
	}
	return su, nil
}

// placeSnapshot fills v's maps and indexes from su, building independent
// maps on all cores. v holds only its containers.
func (v *view) placeSnapshot(su *snapUsers) {
	visible := make([]*entry, 0, len(su.entries))
	for i := range su.states {
		if su.states[i].visible {
			visible = append(visible, su.states[i].e)
		}
	}
	if !sort.SliceIsSorted(visible, func(i, j int) bool { return visible[i].key < visible[j].key }) {
		sort.Slice(visible, func(i, j int) bool { return visible[i].key < visible[j].key })
	}
	v.userList = visible
	tasks := []func(){
		func() {
			v.users = make(map[string]*userState, len(su.states))
			for i := range su.states {
				us := &su.states[i]
				v.users[su.ids[i]] = us
				if us.manager != "" {
					addRel(v.reports, us.manager, su.ids[i])
				}
			}
		},
		func() {
			for _, e := range visible {
				v.byNDN[e.ndn] = e
			}
		},
	}
	for t, idx := range v.eq {
		tasks = append(tasks, func() {
			for _, e := range visible {
				for i := range e.refs {
					if e.refs[i].t == t {
						for _, val := range e.view(i).vals {
							idx.add(t.normalize(val), e)
						}
					}
				}
			}
		})
	}
	work := make(chan func(), len(tasks))
	for _, t := range tasks {
		work <- t
	}
	close(work)
	var wg sync.WaitGroup
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := range work {
				t()
			}
		}()
	}
	wg.Wait()
}

// saveSnapshots writes the snapshot of every loaded view whose saved
// snapshot is not at its tenant's current version, and removes those of
// tenants that no longer exist. The views are brought up to date and
// copied while the store is quiescent, so each snapshot records exactly
// the version it reflects; the files are written after writes resume.
func (d *directory) saveSnapshots(ctx context.Context) error {
	if d.snapDir == "" || executableHash() == "" {
		return nil
	}
	d.saveMu.Lock()
	defer d.saveMu.Unlock()
	defer d.removeStaleSnapshots(ctx)
	d.mu.Lock()
	var loaded []*view
	for _, v := range d.views {
		select {
		case <-v.ready:
			if v.loadErr == nil {
				loaded = append(loaded, v)
			}
		default: // still loading: nothing to save
		}
	}
	d.mu.Unlock()
	var views []*view
	for _, v := range loaded {
		if ver, err := d.st.TenantVersion(ctx, v.tenant); err == nil && ver != "" && v.savedVersion.Load() != ver {
			views = append(views, v)
		}
	}
	if len(views) == 0 {
		return nil
	}
	if err := os.MkdirAll(d.snapDir, 0o700); err != nil {
		return fmt.Errorf("save LDAP views: %w", err)
	}
	type job struct {
		v     *view
		ver   string
		users []userState
	}
	var jobs []job
	var errs []error
	paused := time.Now()
	err := d.st.Quiesce(func() error {
		for _, v := range views {
			ver, err := d.st.TenantVersion(ctx, v.tenant)
			if err == nil {
				err = v.sync(ctx, d.st)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("save LDAP view of %s: %w", v.tenant, err))
				continue
			}
			jobs = append(jobs, job{v, ver, v.capture()})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("save LDAP views: %w", err)
	}
	d.log.Debug("LDAP views copied for saving", "views", len(jobs), "writes paused", time.Since(paused).Round(time.Microsecond))
	for _, j := range jobs {
		began := time.Now()
		key := snapKey{tenant: j.v.tenant, storeVersion: j.ver, options: j.v.opts.Fingerprint(), binary: executableHash()}
		if err := writeSnapshot(ctx, d.snapDir, key, j.users); err != nil {
			errs = append(errs, err)
			continue
		}
		j.v.savedVersion.Store(j.ver)
		d.log.Info("LDAP view saved", "tenant", j.v.tenant, "users", len(j.users), "took", time.Since(began).Round(time.Millisecond))
	}
	return errors.Join(errs...)
}

// saveWhenQuiet saves the views once the store has seen no write for
// quiet, so that a start after a crash finds them current too. It polls
// every quiet/4 until ctx ends.
func (d *directory) saveWhenQuiet(ctx context.Context, quiet time.Duration) {
	tick := time.NewTicker(max(quiet/4, 10*time.Millisecond))
	defer tick.Stop()
	var seen string
	var since time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		ver, err := d.st.Version(ctx)
		if err != nil {
			continue
		}
		if ver != seen {
			seen, since = ver, time.Now()
			continue
		}
		if time.Since(since) < quiet {
			continue
		}
		if err := d.saveSnapshots(ctx); err != nil && ctx.Err() == nil {
			d.log.Warn("saving LDAP views failed", "err", err)
		}
	}
}

// removeStaleSnapshots deletes snapshots of removed tenants and
// temporary files of interrupted saves.
func (d *directory) removeStaleSnapshots(ctx context.Context) {
	ts, err := d.st.Tenants(ctx)
	if err != nil {
		return
	}
	live := map[string]bool{}
	for _, t := range ts {
		live[t.Name+snapSuffix] = true
	}
	des, _ := os.ReadDir(d.snapDir)
	for _, de := range des {
		if !live[de.Name()] && (strings.HasSuffix(de.Name(), snapSuffix) || strings.Contains(de.Name(), ".tmp")) {
			os.Remove(filepath.Join(d.snapDir, de.Name()))
		}
	}
}

// loadSnapshot fills v from its snapshot if one matches the store and
// options. It reports whether it did; on false v is untouched.
func (v *view) loadSnapshot(ctx context.Context, d *directory) bool {
	if d.snapDir == "" {
		return false
	}
	ver, err := d.st.TenantVersion(ctx, v.tenant)
	if err != nil || ver == "" || executableHash() == "" {
		return false
	}
	key := snapKey{tenant: v.tenant, storeVersion: ver, options: v.opts.Fingerprint(), binary: executableHash()}
	su, err := readSnapshot(snapPath(d.snapDir, v.tenant), key)
	if err != nil {
		d.log.Warn("LDAP view snapshot not used", "tenant", v.tenant, "err", err)
		return false
	}
	if su == nil {
		return false
	}
	v.savedVersion.Store(ver)
	resume := pauseGC()
	v.placeSnapshot(su)
	resume()
	return true
}

// gcPaused counts the snapshot placements running with the collector off.
var gcPaused struct {
	sync.Mutex
	n, percent int
}

// pauseGC turns the collector off until the returned func runs. Placing a
// saved view builds a large heap of entries that all stay alive while
// making little garbage (map growth, normalised keys); with the collector
// on it would scan that growing heap again and again. (A rebuild from the
// store keeps it on: every decoded record is garbage at once.) Overlapping
// callers restore the configured percent only when the last is done.
func pauseGC() (resume func()) {
	gcPaused.Lock()
	if gcPaused.n == 0 {
		gcPaused.percent = debug.SetGCPercent(-1)
	}
	gcPaused.n++
	gcPaused.Unlock()
	return func() {
		gcPaused.Lock()
		gcPaused.n--
		if gcPaused.n == 0 {
			debug.SetGCPercent(gcPaused.percent)
		}
		gcPaused.Unlock()
	}
}
