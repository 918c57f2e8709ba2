package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestKill9LosesNoAcknowledgedWrite builds the binary, provisions users
// with 8 concurrent clients, kills the process with SIGKILL mid-burst and
// checks that every user the server acknowledged (201) is in the database.
func TestKill9LosesNoAcknowledgedWrite(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "scimldap")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	data := filepath.Join(dir, "data")
	addr := freePort(t)
	cmd := exec.Command(bin, "-data", data, "-scim-addr", addr, "-ldap-addr", "127.0.0.1:0", "-ldaps-addr", "127.0.0.1:0")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var token string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "Secret" {
			token = f[2]
			break
		}
	}
	go func() {
		for sc.Scan() {
		}
	}()
	if token == "" {
		t.Fatal("no token printed")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("server did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}

	var mu sync.Mutex
	var acked []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				body := fmt.Sprintf(`{"userName":"w%d-%d@kill.test","active":true}`, w, i)
				req, _ := http.NewRequest("POST", "https://"+addr+"/scim/v2/default/Users", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+token)
				resp, err := insecure.Do(req)
				if err != nil {
					return // the server died
				}
				var m map[string]any
				json.NewDecoder(resp.Body).Decode(&m)
				resp.Body.Close()
				if resp.StatusCode == 201 {
					mu.Lock()
					acked = append(acked, m["id"].(string))
					mu.Unlock()
				}
			}
		}(w)
	}
	time.Sleep(1500 * time.Millisecond)
	cmd.Process.Kill() // SIGKILL: no shutdown path runs
	cmd.Wait()
	close(stop)
	wg.Wait()
	if len(acked) < 50 {
		t.Fatalf("only %d users acknowledged before the kill; the burst did not run", len(acked))
	}
	st, err := openStore(data)
	if err != nil {
		t.Fatalf("reopen after kill -9: %v", err)
	}
	defer st.Close()
	for _, id := range acked {
		if _, err := st.User(context.Background(), "default", id); err != nil {
			t.Fatalf("acknowledged user %s lost after kill -9: %v", id, err)
		}
	}
	t.Logf("%d acknowledged creates, all present after kill -9", len(acked))
}
