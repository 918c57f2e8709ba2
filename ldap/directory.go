package ldap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/scimldap/scimldap/mapping"
	"github.com/scimldap/scimldap/store"
)

// eattr is a view of one attribute of an entry: its type and values.
type eattr struct {
	t    *attrType
	vals []string
}

// attrRef locates one attribute's values in an entry's flat value slices.
type attrRef struct {
	t      *attrType
	off, n uint16
}

// entry is one LDAP entry as served. Entries never change once placed, so
// searches read them after releasing the view's lock. The layout is compact
// (one flat value slice, small references) because a tenant holds one
// entry per user in memory.
type entry struct {
	dn    string
	ndn   string
	key   string    // iteration and paging order: containers, users, groups
	refs  []attrRef // user attributes first, then operational ones
	nUser int
	vals  []string
}

func (e *entry) view(i int) eattr {
	r := e.refs[i]
	return eattr{t: r.t, vals: e.vals[r.off : r.off+r.n]}
}

// The operational attributes every entry has are produced when asked for
// rather than stored in each entry.
var (
	typeEntryDN   = registerAttr("entryDN")
	typeSubschema = registerAttr("subschemaSubentry")
)

// get returns attribute t of e.
func (e *entry) get(t *attrType) (eattr, bool) {
	for i := range e.refs {
		if e.refs[i].t == t {
			return e.view(i), true
		}
	}
	if e.key != "" { // directory entries, not the root DSE or subschema
		switch t {
		case typeEntryDN:
			return eattr{t: t, vals: []string{e.dn}}, true
		case typeSubschema:
			return eattr{t: t, vals: []string{subschemaDN}}, true
		}
	}
	return eattr{}, false
}

const subschemaDN = "cn=Subschema"

func newEntry(me mapping.Entry, key string) *entry {
	e := &entry{dn: me.DN, key: key}
	e.ndn, _ = normDN(me.DN)
	n := 0
	for _, a := range me.Attrs {
		n += len(a.Values)
	}
	for _, a := range me.Operational {
		n += len(a.Values)
	}
	e.vals = make([]string, 0, n)
	e.refs = make([]attrRef, 0, len(me.Attrs)+len(me.Operational))
	add := func(as []mapping.Attr) {
		for _, a := range as {
			e.refs = append(e.refs, attrRef{t: registerAttr(a.Name), off: uint16(len(e.vals)), n: uint16(len(a.Values))})
			e.vals = append(e.vals, a.Values...)
		}
	}
	add(me.Attrs)
	e.nUser = len(e.refs)
	add(me.Operational)
	return e
}

// indexed are the attributes with an equality index: what lookups by
// user, name, email and incoming number, and group membership queries ask
// for. Each index costs memory per entry, so the list is kept short; other
// equality filters are answered by a scan.
var indexed = []string{"uid", "cn", "sn", "mail", "telephoneNumber", "mobile", "member", "memberOf", "entryUUID"}

// directory holds one view per tenant, loaded on first use.
type directory struct {
	base    context.Context // cancelled when the server stops; view loads use it
	st      *store.Store
	snapDir string // where view snapshots are kept; "" for none
	saveMu  sync.Mutex
	opts    func(tenant string) mapping.Options
	log     *slog.Logger

	mu    sync.Mutex
	views map[string]*view
}

func newDirectory(base context.Context, st *store.Store, snapDir string, opts func(string) mapping.Options, log *slog.Logger) *directory {
	d := &directory{base: base, st: st, snapDir: snapDir, opts: opts, log: log, views: map[string]*view{}}
	st.Watch(d.onChange)
	return d
}

// onChange runs on the store's writer goroutine after each commit: it only
// queues the change; the view applies it before its next search.
func (d *directory) onChange(c store.Change) {
	d.mu.Lock()
	v := d.views[c.Tenant]
	if v != nil && c.Kind == "" { // the tenant itself changed: rebuild
		delete(d.views, c.Tenant)
	}
	d.mu.Unlock()
	if v != nil && c.Kind != "" {
		v.queue(c)
	}
}

// view returns tenant t's view, loading it if needed. Returns an error
// wrapping store.ErrNotFound for an unknown tenant.
func (d *directory) view(ctx context.Context, t string) (*view, error) {
	v, err := d.startView(t)
	if err != nil {
		return nil, err
	}
	return d.waitView(ctx, v)
}

// startView returns tenant t's view, starting its load if it has none.
// From then on the view records every change the store reports.
func (d *directory) startView(t string) (*view, error) {
	t = strings.ToLower(t)
	d.mu.Lock()
	defer d.mu.Unlock()
	v := d.views[t]
	if v == nil {
		o := d.opts(t)
		v = &view{tenant: t, opts: o, ready: make(chan struct{}), subReady: make(chan struct{}), pending: map[store.Change]struct{}{}}
		if o.ScopeFilter != "" {
			f, err := ParseFilter(o.ScopeFilter)
			if err != nil {
				return nil, fmt.Errorf("tenant %s scope_filter: %w", t, err)
			}
			v.scope = f
		}
		d.views[t] = v
		go v.load(d.base, d) // not the caller's context: the view outlives the request
	}
	return v, nil
}

// waitView waits for v to load and brings it up to date.
func (d *directory) waitView(ctx context.Context, v *view) (*view, error) {
	t := v.tenant
	select {
	case <-v.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if v.loadErr != nil {
		d.mu.Lock()
		if d.views[t] == v {
			delete(d.views, t)
		}
		d.mu.Unlock()
		return nil, v.loadErr
	}
	if err := v.sync(ctx, d.st); err != nil {
		return nil, err
	}
	return v, nil
}

// preload loads every tenant's view in the background, so the first search
// after a start does not wait.
func (d *directory) preload(ctx context.Context) {
	ts, err := d.st.Tenants(ctx)
	if err != nil {
		d.log.Warn("preload of LDAP views failed", "err", err)
		return
	}
	// Every view starts before any is waited for, so each follows the
	// store from now on: a snapshot stays usable only until the first write.
	var vs []*view
	for _, t := range ts {
		v, err := d.startView(t.Name)
		if err != nil {
			d.log.Warn("preload of LDAP view failed", "tenant", t.Name, "err", err)
			continue
		}
		vs = append(vs, v)
	}
	for _, v := range vs {
		if _, err := d.waitView(ctx, v); err != nil && ctx.Err() == nil {
			d.log.Warn("preload of LDAP view failed", "tenant", v.tenant, "err", err)
		}
	}
}

type userState struct {
	e       *entry
	visible bool
	manager string
}

type groupState struct {
	e       *entry
	g       store.Group
	members []string
	visible bool
}

// view is one tenant's directory tree in memory.
type view struct {
	tenant  string
	opts    mapping.Options
	scope   *lfilter
	ready   chan struct{}
	loadErr error

	mu         sync.RWMutex
	byNDN      map[string]*entry
	containers []*entry
	userList   []*entry // visible users, sorted by key
	groupList  []*entry
	users      map[string]*userState
	groups     map[string]*groupState
	reports    map[string]map[string]struct{} // manager id → user ids
	memberOf   map[string]map[string]struct{} // member id → group ids
	eq         map[*attrType]*eqIndex

	pmu     sync.Mutex
	pending map[store.Change]struct{}

	savedVersion atomic.Value // string: the store version of the view's snapshot on disk

	// Substring indexes, built in the background once the view has loaded
	// (see buildSubIndexes); nil until then. Guarded by mu.
	sub         map[*attrType]*subIndex
	subBuilding bool
	subLog      []subOp
	subScratch  []uint32
	subReady    chan struct{} // closed once sub is in place

	tenantDN, peopleDN, groupsDN, adminDN string // normalised
}

func (v *view) queue(c store.Change) {
	v.pmu.Lock()
	v.pending[c] = struct{}{}
	v.pmu.Unlock()
}

// sync applies queued changes. Searches call it first, so a search always
// sees every write acknowledged before it started.
func (v *view) sync(ctx context.Context, st *store.Store) error {
	v.pmu.Lock()
	if len(v.pending) == 0 {
		v.pmu.Unlock()
		return nil
	}
	changes := v.pending
	v.pending = map[store.Change]struct{}{}
	v.pmu.Unlock()
	v.mu.Lock()
	defer v.mu.Unlock()
	var firstErr error
	// Groups first, so user entries see current membership.
	for _, kind := range []store.Kind{store.KindGroup, store.KindUser} {
		for c := range changes {
			if c.Kind != kind {
				continue
			}
			var err error
			if kind == store.KindGroup {
				err = v.applyGroup(ctx, st, c.ID)
			} else {
				err = v.applyUser(ctx, st, c.ID, true)
			}
			if err != nil && firstErr == nil {
				firstErr = err
				v.queue(c) // retry on the next search
			}
		}
	}
	return firstErr
}

func (v *view) load(ctx context.Context, d *directory) {
	defer close(v.ready)
	v.byNDN = map[string]*entry{}
	v.users = map[string]*userState{}
	v.groups = map[string]*groupState{}
	v.reports = map[string]map[string]struct{}{}
	v.memberOf = map[string]map[string]struct{}{}
	v.eq = map[*attrType]*eqIndex{}
	for _, n := range indexed {
		v.eq[registerAttr(n)] = &eqIndex{one: map[string]*entry{}, many: map[string][]*entry{}}
	}
	if _, err := d.st.Tenant(ctx, v.tenant); err != nil {
		v.loadErr = err
		return
	}
	v.buildContainers()
	began := time.Now()
	if v.loadSnapshot(ctx, d) {
		err := v.loadGroups(ctx, d.st)
		if err == nil {
			// Twice: a nested group's DN exists once every group is built.
			for range 2 {
				for id := range v.groups {
					v.buildGroupEntry(id)
				}
			}
			d.log.Info("LDAP view loaded from snapshot", "tenant", v.tenant, "users", len(v.userList), "groups", len(v.groupList), "took", time.Since(began).Round(time.Millisecond))
			go v.buildSubIndexes(ctx)
			return
		}
		v.loadErr = fmt.Errorf("load LDAP view of tenant %s: %w", v.tenant, err)
		return
	}
	err := v.loadGroups(ctx, d.st)
	if err == nil {
		// Group entries first (memberOf needs their DNs), member DNs after.
		for id := range v.groups {
			v.buildGroupEntry(id)
		}
		err = v.loadUsers(ctx, d.st)
	}
	if err != nil {
		v.loadErr = fmt.Errorf("load LDAP view of tenant %s: %w", v.tenant, err)
		return
	}
	// Member DNs need every user placed.
	for id := range v.groups {
		v.buildGroupEntry(id)
	}
	if err := d.st.ReleaseMemory(); err != nil {
		d.log.Warn("could not release the database's mapped pages", "err", err)
	}
	go v.buildSubIndexes(ctx)
	d.log.Info("LDAP view loaded", "tenant", v.tenant, "users", len(v.userList), "groups", len(v.groupList), "took", time.Since(began).Round(time.Millisecond))
}

// loadGroups reads every group of the tenant with its members.
func (v *view) loadGroups(ctx context.Context, st *store.Store) error {
	return st.ScanGroups(ctx, v.tenant, true, func(g *store.Group) error {
		gs := &groupState{g: *g}
		for _, m := range g.Members {
			gs.members = append(gs.members, m.ID)
			addRel(v.memberOf, m.ID, g.ID)
		}
		gs.g.Members = nil
		v.groups[g.ID] = gs
		return nil
	})
}

func addRel(m map[string]map[string]struct{}, k, v string) {
	s := m[k]
	if s == nil {
		s = map[string]struct{}{}
		m[k] = s
	}
	s[v] = struct{}{}
}

func delRel(m map[string]map[string]struct{}, k, v string) {
	if s := m[k]; s != nil {
		delete(s, v)
		if len(s) == 0 {
			delete(m, k)
		}
	}
}

func (v *view) buildContainers() {
	tdn := v.opts.TenantDN(v.tenant)
	mk := func(dn, key string, attrs ...mapping.Attr) *entry {
		e := newEntry(mapping.Entry{DN: dn, Attrs: attrs}, key)
		v.byNDN[e.ndn] = e
		v.containers = append(v.containers, e)
		return e
	}
	te := mk(tdn, "0a", mapping.Attr{Name: "objectClass", Values: []string{"top", "organization"}}, mapping.Attr{Name: "o", Values: []string{v.tenant}})
	pe := mk("ou=people,"+tdn, "0b", mapping.Attr{Name: "objectClass", Values: []string{"top", "organizationalUnit"}}, mapping.Attr{Name: "ou", Values: []string{"people"}})
	ge := mk("ou=groups,"+tdn, "0c", mapping.Attr{Name: "objectClass", Values: []string{"top", "organizationalUnit"}}, mapping.Attr{Name: "ou", Values: []string{"groups"}})
	ae := mk("ou=admin,"+tdn, "0d", mapping.Attr{Name: "objectClass", Values: []string{"top", "organizationalUnit"}}, mapping.Attr{Name: "ou", Values: []string{"admin"}},
		mapping.Attr{Name: "description", Values: []string{"service accounts that bind to this directory; not listed"}})
	v.tenantDN, v.peopleDN, v.groupsDN, v.adminDN = te.ndn, pe.ndn, ge.ndn, ae.ndn
}

func (v *view) userDN(id string) string {
	if us := v.users[id]; us != nil && us.visible {
		return us.e.dn
	}
	return ""
}

func (v *view) groupDNsOf(id string) []string {
	var dns []string
	for gid := range v.memberOf[id] {
		if gs := v.groups[gid]; gs != nil && gs.e != nil {
			dns = append(dns, gs.e.dn)
		}
	}
	sort.Strings(dns)
	return dns
}

// loadUsers builds every user's entry on all cores and places them from
// one goroutine. Manager DNs need every user's DN, so users with a manager
// are built again in a second pass, from a snapshot of the DNs.
func (v *view) loadUsers(ctx context.Context, st *store.Store) error {
	type built struct {
		id, manager string
		e           *entry
		visible     bool
	}
	pass := func(build func(u *store.User) (*entry, bool, bool)) error {
		ch := make(chan built, 1024)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for b := range ch {
				v.placeUser(b.id, b.manager, b.e, b.visible)
			}
		}()
		err := st.ScanUsersConcurrently(ctx, v.tenant, runtime.GOMAXPROCS(0), func(u *store.User) error {
			if e, visible, ok := build(u); ok {
				ch <- built{u.ID, u.Enterprise.Manager, e, visible}
			}
			return nil
		})
		close(ch)
		<-done
		return err
	}
	var managers atomic.Bool
	err := pass(func(u *store.User) (*entry, bool, bool) {
		if u.Enterprise.Manager != "" {
			managers.Store(true)
		}
		e, visible := v.buildUser(u, "") // reads only group state, fixed while loading
		return e, visible, true
	})
	if err != nil || !managers.Load() {
		return err
	}
	dnOf := make(map[string]string, len(v.users)) // read-only during the second pass
	for id, us := range v.users {
		if us.visible {
			dnOf[id] = us.e.dn
		}
	}
	return pass(func(u *store.User) (*entry, bool, bool) {
		if u.Enterprise.Manager == "" {
			return nil, false, false
		}
		e, visible := v.buildUser(u, dnOf[u.Enterprise.Manager])
		return e, visible, true
	})
}

// buildUser makes u's entry and says whether it is shown.
func (v *view) buildUser(u *store.User, managerDN string) (*entry, bool) {
	e := newEntry(v.opts.UserEntry(v.tenant, u, managerDN, v.groupDNsOf(u.ID)), "1"+u.ID)
	visible := v.opts.Visible(u) && v.opts.UserRDNValue(u) != "" && (v.scope == nil || v.scope.match(e) == trueT)
	return e, visible
}

// placeUser replaces user id's entry with e, keeping relations current.
func (v *view) placeUser(id, manager string, e *entry, visible bool) (oldDN string, oldVisible bool) {
	old := v.users[id]
	if old != nil {
		oldDN, oldVisible = old.e.dn, old.visible
		v.unplace(old.e, old.visible)
		if old.manager != manager {
			delRel(v.reports, old.manager, id)
		}
	}
	if manager != "" {
		addRel(v.reports, manager, id)
	}
	if other := v.byNDN[e.ndn]; visible && other != nil && other != e {
		// Two users mapping to one DN (a uid mapping that is not unique):
		// the first keeps it; the second stays hidden rather than shadow it.
		visible = false
	}
	v.users[id] = &userState{e: e, manager: manager, visible: visible}
	v.place(e, visible)
	return
}

// putUser (re)builds the entry of u and places it; it returns the old
// entry's DN and visibility so callers can tell whether dependents change.
func (v *view) putUser(u *store.User) (oldDN string, oldVisible bool) {
	e, visible := v.buildUser(u, v.userDN(u.Enterprise.Manager))
	return v.placeUser(u.ID, u.Enterprise.Manager, e, visible)
}

func (v *view) place(e *entry, visible bool) {
	if !visible {
		return
	}
	v.byNDN[e.ndn] = e
	if strings.HasPrefix(e.key, "1") {
		v.userList = insertSorted(v.userList, e)
	} else {
		v.groupList = insertSorted(v.groupList, e)
	}
	v.indexEntry(e, true)
}

func (v *view) unplace(e *entry, visible bool) {
	if !visible {
		return
	}
	if v.byNDN[e.ndn] == e {
		delete(v.byNDN, e.ndn)
	}
	if strings.HasPrefix(e.key, "1") {
		v.userList = removeSorted(v.userList, e)
	} else {
		v.groupList = removeSorted(v.groupList, e)
	}
	v.indexEntry(e, false)
}

// indexEntry adds e to (or removes it from) the equality and substring
// indexes.
func (v *view) indexEntry(e *entry, add bool) {
	for i := range e.refs {
		t := e.refs[i].t
		idx := v.eq[t]
		if idx == nil {
			continue
		}
		for _, val := range e.view(i).vals {
			if add {
				idx.add(t.normalize(val), e)
			} else {
				idx.remove(t.normalize(val), e)
			}
		}
	}
	v.subPlace(e, add)
}

func insertSorted(l []*entry, e *entry) []*entry {
	i := sort.Search(len(l), func(i int) bool { return l[i].key >= e.key })
	if i < len(l) && l[i] == e {
		return l
	}
	l = append(l, nil)
	copy(l[i+1:], l[i:])
	l[i] = e
	return l
}

func removeSorted(l []*entry, e *entry) []*entry {
	i := sort.Search(len(l), func(i int) bool { return l[i].key >= e.key })
	if i < len(l) && l[i] == e {
		return append(l[:i], l[i+1:]...)
	}
	return l
}

// applyUser reloads user id from the store and updates its entry; with
// cascade, entries that show its DN (reports' manager, groups' member)
// are refreshed when the DN or visibility changed.
func (v *view) applyUser(ctx context.Context, st *store.Store, id string, cascade bool) error {
	u, err := st.User(ctx, v.tenant, id)
	if errors.Is(err, store.ErrNotFound) {
		v.removeUser(ctx, st, id)
		return nil
	}
	if err != nil {
		return err
	}
	oldDN, oldVis := v.putUser(&u)
	us := v.users[id]
	if cascade && (oldDN != us.e.dn || oldVis != us.visible) {
		return v.refreshDependents(ctx, st, id)
	}
	return nil
}

func (v *view) refreshDependents(ctx context.Context, st *store.Store, id string) error {
	for rid := range v.reports[id] {
		if err := v.applyUser(ctx, st, rid, false); err != nil {
			return err
		}
	}
	for gid := range v.memberOf[id] {
		v.buildGroupEntry(gid)
	}
	return nil
}

func (v *view) removeUser(ctx context.Context, st *store.Store, id string) {
	us := v.users[id]
	if us == nil {
		return
	}
	v.unplace(us.e, us.visible)
	delRel(v.reports, us.manager, id)
	delete(v.users, id)
	_ = v.refreshDependents(ctx, st, id) // dependents lose the DN
}

// applyGroup reloads group id with its members and updates its entry and
// the memberOf of every member that joined or left.
func (v *view) applyGroup(ctx context.Context, st *store.Store, id string) error {
	g, err := st.Group(ctx, v.tenant, id, true)
	notFound := errors.Is(err, store.ErrNotFound)
	if err != nil && !notFound {
		return err
	}
	affected := map[string]struct{}{}
	old := v.groups[id]
	renamed := false
	if old != nil {
		for _, m := range old.members {
			delRel(v.memberOf, m, id)
			affected[m] = struct{}{}
		}
		if old.e != nil {
			v.unplace(old.e, old.visible)
			renamed = notFound || old.g.DisplayName != g.DisplayName
		}
	}
	if notFound {
		delete(v.groups, id)
	} else {
		gs := &groupState{g: g}
		for _, m := range g.Members {
			gs.members = append(gs.members, m.ID)
			addRel(v.memberOf, m.ID, id)
			affected[m.ID] = struct{}{}
		}
		gs.g.Members = nil
		v.groups[id] = gs
		v.buildGroupEntry(id)
	}
	for m := range affected {
		if _, isUser := v.users[m]; isUser {
			if err := v.applyUser(ctx, st, m, false); err != nil {
				return err
			}
		}
	}
	if renamed {
		// Groups that list this one as a member show its DN.
		for pid := range v.memberOf[id] {
			v.buildGroupEntry(pid)
		}
	}
	return nil
}

// buildGroupEntry (re)builds group id's entry from its state and the
// current DNs of its members.
func (v *view) buildGroupEntry(id string) {
	gs := v.groups[id]
	if gs == nil {
		return
	}
	if gs.e != nil {
		v.unplace(gs.e, gs.visible)
	}
	var dns []string
	for _, m := range gs.members {
		if dn := v.userDN(m); dn != "" {
			dns = append(dns, dn)
		} else if ng := v.groups[m]; ng != nil && ng.e != nil && m != id {
			dns = append(dns, ng.e.dn)
		}
	}
	sort.Strings(dns)
	gs.e = newEntry(v.opts.GroupEntry(v.tenant, &gs.g, dns), "2"+id)
	gs.visible = v.byNDN[gs.e.ndn] == nil
	v.place(gs.e, gs.visible)
}

// eqIndex maps a normalised value to the entries holding it. Most values
// are held by one entry (uid, mail, numbers), which costs one pointer;
// shared values (a common surname) move to a list.
type eqIndex struct {
	one  map[string]*entry
	many map[string][]*entry
}

func (x *eqIndex) add(v string, e *entry) {
	if l, ok := x.many[v]; ok {
		x.many[v] = append(l, e)
		return
	}
	if o, ok := x.one[v]; ok {
		if o == e {
			return
		}
		delete(x.one, v)
		x.many[v] = []*entry{o, e}
		return
	}
	x.one[v] = e
}

func (x *eqIndex) remove(v string, e *entry) {
	if o, ok := x.one[v]; ok {
		if o == e {
			delete(x.one, v)
		}
		return
	}
	l := x.many[v]
	for i, y := range l {
		if y == e {
			l[i] = l[len(l)-1]
			l = l[:len(l)-1]
			break
		}
	}
	switch len(l) {
	case 0:
		delete(x.many, v)
	case 1:
		delete(x.many, v)
		x.one[v] = l[0]
	default:
		x.many[v] = l
	}
}

// lookup returns the entries holding v; the slice must not be modified.
func (x *eqIndex) lookup(v string) []*entry {
	if e, ok := x.one[v]; ok {
		return []*entry{e}
	}
	return x.many[v]
}
