package ldap

import (
	"context"
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/scimldap/scimldap/store"
)

// TestBenchAgainstSlapd is the LDAP bench command (see README): the same
// synthetic Entra-shaped users in scimldap and in a throwaway slapd (mdb,
// eq+sub indexes on uid, cn, sn, mail, telephoneNumber), the same go-ldap
// workloads with 8 clients, one run, each figure for both and the ratio.
// It runs only when SCIMLDAP_BENCH_USERS is set; SCIMLDAP_BENCH_SECONDS
// sets each workload's duration (default 5).
func TestBenchAgainstSlapd(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("SCIMLDAP_BENCH_USERS"))
	if n == 0 {
		t.Skip("set SCIMLDAP_BENCH_USERS (e.g. 100000) to run the benchmark against slapd")
	}
	secs := 5
	if s := os.Getenv("SCIMLDAP_BENCH_SECONDS"); s != "" {
		secs, _ = strconv.Atoi(s)
	}
	dur := time.Duration(secs) * time.Second
	requireTool(t, "slapd")
	ldapsearch := requireTool(t, "ldapsearch")

	// scimldap runs as its own process, like slapd, so that the clients'
	// garbage and the server's heap do not share one GC and RSS is the
	// server's alone.
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	os.MkdirAll(data, 0o700)
	st, err := store.Open(filepath.Join(data, "scimldap.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, tok := store.NewSecret()
	if _, err := st.CreateTenant(t.Context(), "acme", tok); err != nil {
		t.Fatal(err)
	}
	pw, hash := store.NewSecret()
	st.PutAccount(t.Context(), "acme", store.Account{Name: "reader", Password: hash})
	began := time.Now()
	synthUsers(t, st, "acme", n)
	t.Logf("loaded %d users into the store in %s", n, time.Since(began).Round(time.Millisecond))
	st.Close()
	bin := filepath.Join(dir, "scimldap")
	if out, err := exec.Command("go", "build", "-o", bin, "..").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	ldapAddr := ln.Addr().String()
	ln.Close()
	began = time.Now()
	cmd := exec.Command(bin, "-data", data, "-scim-addr", "127.0.0.1:0", "-ldap-addr", ldapAddr, "-ldaps-addr", "")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() })
	var listening time.Duration
	for {
		if c, err := net.Dial("tcp", ldapAddr); err == nil {
			c.Close()
			listening = time.Since(began)
			break
		}
		if time.Since(began) > 30*time.Second {
			t.Fatal("scimldap did not start")
		}
		time.Sleep(2 * time.Millisecond)
	}
	ours, err := goldap.DialURL("ldap://" + ldapAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	if err := ours.Bind("uid=reader,ou=admin,o=acme,dc=scimldap", pw); err != nil {
		t.Fatal(err)
	}
	search(t, ours, "o=acme,dc=scimldap", goldap.ScopeBaseObject, "(objectClass=*)")
	firstSearch := time.Since(began)
	firstRSS := pidRSS(cmd.Process.Pid)

	began = time.Now()
	ldif := exportLDIF(t, ours)
	sl := startSlapd(t, ldif)
	ldif = nil
	t.Logf("slapd loaded (slapadd) and started in %s", time.Since(began).Round(time.Millisecond))

	type target struct {
		name   string
		addr   string
		dn, pw string
		pid    int
	}
	targets := []target{
		{"scimldap", ldapAddr, "uid=reader,ou=admin,o=acme,dc=scimldap", pw, cmd.Process.Pid},
		{"slapd", sl.addr, sl.rootDN, sl.pw, sl.cmd.Process.Pid},
	}
	dial := func(tg target) *goldap.Conn {
		l, err := goldap.DialURL("ldap://" + tg.addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Bind(tg.dn, tg.pw); err != nil {
			t.Fatal(err)
		}
		return l
	}
	// cpu records, per workload and target, the CPU time per operation of
	// the clients (this process) and of the server, so the table shows how
	// much of the 2 cores the go-ldap clients themselves take.
	type cpuUse struct{ client, server time.Duration }
	cpu := map[string]cpuUse{}
	// run drives op with 8 clients for dur and returns operations per second.
	run := func(tg target, op func(l *goldap.Conn, r *rand.Rand) error) float64 {
		c0, s0 := selfCPU(), pidCPU(tg.pid)
		defer func() {
			cpu[tg.name] = cpuUse{selfCPU() - c0, pidCPU(tg.pid) - s0}
		}()
		var count atomic.Int64
		var wg sync.WaitGroup
		deadline := time.Now().Add(dur)
		for c := 0; c < 8; c++ {
			wg.Add(1)
			go func(c int) {
				defer wg.Done()
				l := dial(tg)
				defer l.Close()
				r := rand.New(rand.NewSource(int64(c)))
				for time.Now().Before(deadline) {
					if err := op(l, r); err != nil {
						t.Errorf("%s: %v", tg.name, err)
						return
					}
					count.Add(1)
				}
			}(c)
		}
		wg.Wait()
		return float64(count.Load()) / dur.Seconds()
	}
	okOrSizeLimit := func(err error) error {
		if err == nil || goldap.IsErrorWithCode(err, goldap.LDAPResultSizeLimitExceeded) {
			return nil
		}
		return err
	}
	base := "o=acme,dc=scimldap"
	workloads := []struct {
		name string
		unit string
		op   func(l *goldap.Conn, r *rand.Rand) error
	}{
		{"(a) uid equality lookup", "ops/s", func(l *goldap.Conn, r *rand.Rand) error {
			i := r.Intn(n)
			res, err := l.Search(goldap.NewSearchRequest(base, goldap.ScopeWholeSubtree, 0, 0, 0, false, fmt.Sprintf("(uid=u%06d@acme.test)", i), nil, nil))
			if err == nil && len(res.Entries) != 1 {
				err = fmt.Errorf("uid lookup found %d entries", len(res.Entries))
			}
			return err
		}},
		{"(b) phone-book (|(cn=*ros*)(sn=*ros*)) sizeLimit 50", "ops/s", func(l *goldap.Conn, r *rand.Rand) error {
			q := []string{"ros", "mar", "ann", "ric", "esp", "col"}[r.Intn(6)]
			_, err := l.Search(goldap.NewSearchRequest(base, goldap.ScopeWholeSubtree, 0, 50, 0, false, fmt.Sprintf("(|(cn=*%s*)(sn=*%s*))", q, q), []string{"cn", "telephoneNumber", "mobile"}, nil))
			return okOrSizeLimit(err)
		}},
		{"(b2) phone-book query for a name nobody has", "ops/s", func(l *goldap.Conn, r *rand.Rand) error {
			q := []string{"zhou", "kowalsk", "nakamura", "dubois", "okafor", "lindqvist"}[r.Intn(6)]
			res, err := l.Search(goldap.NewSearchRequest(base, goldap.ScopeWholeSubtree, 0, 50, 0, false, fmt.Sprintf("(|(cn=*%s*)(sn=*%s*))", q, q), []string{"cn", "telephoneNumber", "mobile"}, nil))
			if err == nil && len(res.Entries) != 0 {
				err = fmt.Errorf("%q found %d entries", q, len(res.Entries))
			}
			return err
		}},
		{"(c) incoming-call number lookup", "ops/s", func(l *goldap.Conn, r *rand.Rand) error {
			i := r.Intn(n)
			num := fmt.Sprintf("+39 06 %07d", i)
			res, err := l.Search(goldap.NewSearchRequest(base, goldap.ScopeWholeSubtree, 0, 0, 0, false, "(|(telephoneNumber="+num+")(mobile="+num+"))", []string{"cn"}, nil))
			if err == nil && len(res.Entries) != 1 {
				err = fmt.Errorf("number lookup found %d entries", len(res.Entries))
			}
			return err
		}},
	}
	type row struct {
		name, unit   string
		ours, theirs float64
		higherBetter bool
		cpu          [2]cpuUse // per operation
	}
	var rows []row
	perOp := func(c cpuUse, rate float64) cpuUse {
		ops := rate * dur.Seconds()
		return cpuUse{time.Duration(float64(c.client) / ops), time.Duration(float64(c.server) / ops)}
	}
	for _, w := range workloads {
		r := row{name: w.name, unit: w.unit, higherBetter: true}
		r.ours = run(targets[0], w.op)
		r.cpu[0] = perOp(cpu[targets[0].name], r.ours)
		r.theirs = run(targets[1], w.op)
		r.cpu[1] = perOp(cpu[targets[1].name], r.theirs)
		rows = append(rows, r)
	}
	// (d) full paged dump, go-ldap and ldapsearch.
	dumpCPU := map[string]cpuUse{}
	dump := func(tg target) (float64, float64) {
		l := dial(tg)
		defer l.Close()
		runtime.GC() // the previous dump's entries are the clients' garbage, not this one's
		t0 := time.Now()
		c0, s0 := selfCPU(), pidCPU(tg.pid)
		res, err := l.SearchWithPaging(goldap.NewSearchRequest(base, goldap.ScopeWholeSubtree, 0, 0, 0, false, "(objectClass=*)", []string{"*"}, nil), 500)
		if err != nil || len(res.Entries) < n {
			t.Fatalf("%s dump: %d entries, %v", tg.name, len(res.Entries), err)
		}
		goTime := time.Since(t0).Seconds()
		dumpCPU[tg.name] = cpuUse{selfCPU() - c0, pidCPU(tg.pid) - s0}
		t0 = time.Now()
		cmd := exec.Command(ldapsearch, "-x", "-LLL", "-H", "ldap://"+tg.addr, "-D", tg.dn, "-w", tg.pw, "-b", base, "-E", "pr=500/noprompt", "(objectClass=*)", "*")
		cmd.Env = append(os.Environ(), "LDAPCONF=/dev/null", "LDAPRC=/dev/null")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s ldapsearch dump: %v", tg.name, err)
		}
		if got := strings.Count(string(out), "\ndn: "); got < n {
			t.Fatalf("%s ldapsearch dump: %d entries", tg.name, got)
		}
		return goTime, time.Since(t0).Seconds()
	}
	// Each dump twice, alternating, keeping the faster: one run of 100,000
	// entries on a shared machine is noisy.
	og, ol := dump(targets[0])
	sg, sl2 := dump(targets[1])
	og2, ol2 := dump(targets[0])
	sg2, sl22 := dump(targets[1])
	og, ol, sg, sl2 = min(og, og2), min(ol, ol2), min(sg, sg2), min(sl2, sl22)
	rows = append(rows, row{name: "(d) paged dump (500/page, all attributes), go-ldap", unit: "s", ours: og, theirs: sg},
		row{name: "(d) paged dump (500/page, all attributes), ldapsearch", unit: "s", ours: ol, theirs: sl2})
	// (e) bind rate on persistent connections.
	bind := func(tg target) func(l *goldap.Conn, r *rand.Rand) error {
		return func(l *goldap.Conn, r *rand.Rand) error { return l.Bind(tg.dn, tg.pw) }
	}
	be := row{name: "(e) simple binds", unit: "ops/s", higherBetter: true}
	be.ours = run(targets[0], bind(targets[0]))
	be.cpu[0] = perOp(cpu[targets[0].name], be.ours)
	be.theirs = run(targets[1], bind(targets[1]))
	be.cpu[1] = perOp(cpu[targets[1].name], be.theirs)
	rows = append(rows, be)
	rows = append(rows, row{name: "RSS after the run", unit: "MB", ours: float64(pidRSS(targets[0].pid)) / (1 << 20), theirs: float64(pidRSS(targets[1].pid)) / (1 << 20)})

	var b strings.Builder
	fmt.Fprintf(&b, "\nN = %d users, 8 clients, %s per workload, GOMAXPROCS=%d\n", n, dur, runtime.GOMAXPROCS(0))
	fmt.Fprintf(&b, "%-58s %12s %12s %8s  %s\n", "workload", "scimldap", "slapd", "ratio", "")
	for _, r := range rows {
		ratio := r.ours / r.theirs
		note := "scimldap/slapd"
		if !r.higherBetter {
			ratio = r.theirs / r.ours
			note = "slapd/scimldap (>1: scimldap better)"
		}
		fmt.Fprintf(&b, "%-58s %12.1f %12.1f %7.2fx  %s %s\n", r.name, r.ours, r.theirs, ratio, r.unit, note)
	}
	fmt.Fprintf(&b, "\nCPU time per operation (µs): the go-ldap clients in this process, and the server.\n")
	fmt.Fprintf(&b, "%-58s %10s %10s %10s %10s %14s\n", "workload", "clients", "scimldap", "clients", "slapd", "client ceiling")
	for _, r := range rows {
		if r.cpu[0].client == 0 {
			continue
		}
		us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
		// With the clients' own CPU cost, no server could be driven
		// faster than this on GOMAXPROCS cores.
		ceiling := float64(runtime.GOMAXPROCS(0)) * float64(time.Second) / float64(r.cpu[0].client)
		fmt.Fprintf(&b, "%-58s %10.1f %10.1f %10.1f %10.1f %10.0f ops/s\n", r.name, us(r.cpu[0].client), us(r.cpu[0].server), us(r.cpu[1].client), us(r.cpu[1].server), ceiling)
	}
	fmt.Fprintf(&b, "(d) go-ldap paged dump, CPU time: clients %s and scimldap %s; clients %s and slapd %s\n",
		dumpCPU["scimldap"].client.Round(time.Millisecond), dumpCPU["scimldap"].server.Round(time.Millisecond),
		dumpCPU["slapd"].client.Round(time.Millisecond), dumpCPU["slapd"].server.Round(time.Millisecond))
	fmt.Fprintf(&b, "scimldap start-up with %d stored users, view rebuilt from the store: listening after %s, first search answered after %s, RSS then %d MB\n", n,
		listening.Round(time.Millisecond), firstSearch.Round(time.Millisecond), firstRSS>>20)

	// Restart: the view saved at shutdown is loaded instead of rebuilt.
	cmd.Process.Signal(os.Interrupt)
	stopping := time.Now()
	cmd.Wait()
	stopped := time.Since(stopping)
	began = time.Now()
	cmd = exec.Command(bin, "-data", data, "-scim-addr", "127.0.0.1:0", "-ldap-addr", ldapAddr, "-ldaps-addr", "")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var again *goldap.Conn
	for again == nil {
		if again, err = goldap.DialURL("ldap://" + ldapAddr); err != nil {
			if time.Since(began) > 30*time.Second {
				t.Fatal("scimldap did not restart")
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	defer again.Close()
	if err := again.Bind("uid=reader,ou=admin,o=acme,dc=scimldap", pw); err != nil {
		t.Fatal(err)
	}
	search(t, again, "o=acme,dc=scimldap", goldap.ScopeBaseObject, "(objectClass=*)")
	answered := time.Since(began)
	time.Sleep(time.Second) // the garbage of placing is returned in the background
	fmt.Fprintf(&b, "scimldap shutdown (saving the view) took %s; restart from the saved view: first search answered after %s, RSS 1 s later %d MB\n",
		stopped.Round(time.Millisecond), answered.Round(time.Millisecond), pidRSS(cmd.Process.Pid)>>20)
	t.Log(b.String())
}

// pidRSS reads another process's resident set size.
func pidRSS(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// selfCPU returns this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pidCPU returns another process's user+system CPU time (from
// /proc/PID/stat, in clock ticks of 10 ms).
func pidCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(fields) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

var _ = context.Background
