// Runs containerd 1.6's snapshotter conformance suite (snapshots/testsuite) against
// `lazy2dfs serve`, through containerd's own proxy client over a unix-socket gRPC connection:
// the same path containerd takes for a `[proxy_plugins]` snapshotter.
//
// The upstream suite is imported from Debian's golang-github-containerd-containerd-dev, never
// copied. Built offline in GOPATH mode; see README.md beside this file.
//
// Environment:
//
//	CONFORMANCE_LAZY2DFS_BIN      path of the lazy2dfs executable (required)
//	CONFORMANCE_LOGDIR            where each daemon's stdout+stderr is kept (default: the test's
//	                              temp dir, deleted with it)
//	CONFORMANCE_START_TIMEOUT     how long to wait for the socket (Go duration, default 60s)
//	CONFORMANCE_STOP_TIMEOUT      how long SIGTERM may take before SIGKILL (default 15s)
//	CONFORMANCE_SERVE_EXTRA_ARGS  extra arguments for `lazy2dfs serve`, split on white space
//
// Not LAZY2DFS_*: the daemons inherit this environment, and lazy2dfs refuses LAZY2DFS_*
// variables that are not its options.
package conformance

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/log"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
)

// The name the proxy client sends in every request's `snapshotter` field, as containerd would for
// `[proxy_plugins.lazy2dfs]`.
const snapshotterName = "lazy2dfs"

// sun_path is 108 bytes on Linux, including the terminating NUL.
const maxSocketPath = 107

var daemonSeq int64

func TestLazy2dfsConformance(t *testing.T) {
	bin := os.Getenv("CONFORMANCE_LAZY2DFS_BIN")
	if bin == "" {
		t.Fatal("CONFORMANCE_LAZY2DFS_BIN is not set: it must name the lazy2dfs executable (e.g. .venv/bin/lazy2dfs)")
	}
	if _, err := exec.LookPath(bin); err != nil {
		t.Fatalf("CONFORMANCE_LAZY2DFS_BIN=%q is not executable: %v", bin, err)
	}
	if os.Geteuid() != 0 {
		t.Fatal("the snapshotter conformance suite mounts file systems and chowns files: run it as root")
	}
	testsuite.SnapshotterSuite(t, snapshotterName, func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		return startDaemon(ctx, bin, root)
	})
}

func envDuration(name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			return d
		}
	}
	return def
}

type daemon struct {
	cmd     *exec.Cmd
	root    string
	sock    string
	logPath string
	done    chan struct{} // closed once cmd.Wait has returned
	waitErr error
}

func startDaemon(ctx context.Context, bin, root string) (snapshots.Snapshotter, func() error, error) {
	state := filepath.Join(root, "state")
	sock := filepath.Join(root, "lazy2dfs.sock")
	if len(sock) > maxSocketPath {
		return nil, nil, fmt.Errorf("socket path %q is %d bytes, over the %d a unix socket allows: use a shorter TMPDIR", sock, len(sock), maxSocketPath)
	}

	logDir := os.Getenv("CONFORMANCE_LOGDIR")
	if logDir == "" {
		logDir = filepath.Dir(root)
	}
	seq := atomic.AddInt64(&daemonSeq, 1)
	logPath := filepath.Join(logDir, fmt.Sprintf("daemon-%03d-%s.log", seq, filepath.Base(filepath.Dir(root))))
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, nil, fmt.Errorf("create daemon log: %w", err)
	}
	defer logFile.Close() // the child keeps its own descriptor

	args := []string{"serve", "--root", state, "--address", sock}
	args = append(args, strings.Fields(os.Getenv("CONFORMANCE_SERVE_EXTRA_ARGS"))...)
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Own process group, so that whatever the daemon starts can be killed with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start %s: %w", bin, err)
	}
	d := &daemon{cmd: cmd, root: root, sock: sock, logPath: logPath, done: make(chan struct{})}
	go func() {
		d.waitErr = cmd.Wait()
		close(d.done)
	}()
	// The marker pytest looks for to show the right log with a failing test.
	log.G(ctx).Infof("lazy2dfs daemon pid=%d log=%s", cmd.Process.Pid, logPath)

	if err := d.waitForSocket(envDuration("CONFORMANCE_START_TIMEOUT", 60*time.Second)); err != nil {
		_ = d.stop()
		return nil, nil, err
	}

	dialCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(dialCtx, "lazy2dfs",
		grpc.WithInsecure(),
		grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}),
	)
	if err != nil {
		_ = d.stop()
		return nil, nil, fmt.Errorf("grpc dial %s: %w%s", sock, err, d.logTail())
	}

	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), snapshotterName)
	cleanup := func() error {
		var errs []string
		if err := conn.Close(); err != nil {
			errs = append(errs, fmt.Sprintf("close grpc connection: %v", err))
		}
		if err := d.stop(); err != nil {
			errs = append(errs, err.Error())
		}
		if err := unmountUnder(root); err != nil {
			errs = append(errs, err.Error())
		}
		if len(errs) > 0 {
			return errors.New(strings.Join(errs, "; ") + d.logTail())
		}
		return nil
	}
	return sn, cleanup, nil
}

func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

func (d *daemon) waitForSocket(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if d.exited() {
			return fmt.Errorf("lazy2dfs serve exited before serving %s: %v%s", d.sock, d.waitErr, d.logTail())
		}
		if conn, err := net.DialTimeout("unix", d.sock, time.Second); err == nil {
			conn.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lazy2dfs serve did not listen on %s within %s%s", d.sock, timeout, d.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM, waits (bounded), then SIGKILLs the whole process group. A daemon that
// needs SIGKILL, or exits with a failure status, is an error; dying of the SIGTERM itself is not.
func (d *daemon) stop() error {
	pid := d.cmd.Process.Pid
	if d.exited() {
		return d.exitError("before it was asked to stop")
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	timeout := envDuration("CONFORMANCE_STOP_TIMEOUT", 15*time.Second)
	select {
	case <-d.done:
		// Anything the daemon left in its group goes too.
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		return d.exitError("after SIGTERM")
	case <-time.After(timeout):
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("lazy2dfs serve (pid %d) survived SIGKILL", pid)
	}
	return fmt.Errorf("lazy2dfs serve (pid %d) ignored SIGTERM for %s and was killed", pid, timeout)
}

func (d *daemon) exitError(when string) error {
	if d.waitErr == nil {
		return nil
	}
	var ee *exec.ExitError
	if errors.As(d.waitErr, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
			return nil
		}
	}
	return fmt.Errorf("lazy2dfs serve exited %s: %v", when, d.waitErr)
}

func (d *daemon) logTail() string {
	const max = 4096
	b, err := os.ReadFile(d.logPath)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return fmt.Sprintf("\n--- tail of %s ---\n%s", d.logPath, b)
}

// unmountUnder detaches every mount at or below dir (deepest first) and reports them: after the
// daemon has stopped, whatever it mounted under its root must be gone.
func unmountUnder(dir string) error {
	points, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	if len(points) == 0 {
		return nil
	}
	for i := len(points) - 1; i >= 0; i-- {
		_ = unix.Unmount(points[i], unix.MNT_DETACH)
	}
	return fmt.Errorf("mounts left under %s after lazy2dfs serve stopped (detached now): %s", dir, strings.Join(points, ", "))
}

func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		p := unescapeMountinfo(fields[4])
		if p == dir || strings.HasPrefix(p, dir+"/") {
			points = append(points, p)
		}
	}
	return points, sc.Err()
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
