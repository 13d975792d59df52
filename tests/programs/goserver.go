// A Go net/http server for `handover run`: its listener is fd 3 (systemd socket activation),
// and it drains the way a zero-downtime restart needs. `Server.Shutdown` (and
// `SetKeepAlivesEnabled(false)`) close idle kept-alive connections at once, while clients may be
// sending on them; so on SIGTERM: stop accepting, answer every further request with
// `Connection: close`, give clients an idle grace to get that answer, then shut down.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"
)

const idleGrace = 500 * time.Millisecond

func main() {
	if len(os.Args) > 1 && os.Args[1] == "--version" {
		fmt.Println("goserver 1.0")
		return
	}
	listener, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "goserver: fd 3:", err)
		os.Exit(1)
	}
	var draining atomic.Bool
	server := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if draining.Load() {
				w.Header().Set("Connection", "close")
			}
			fmt.Fprintf(w, "hello from pid=%d go\n", os.Getpid())
		}),
		IdleTimeout: 60 * time.Second,
	}
	done := make(chan struct{})
	go func() {
		signals := make(chan os.Signal, 1)
		signal.Notify(signals, syscall.SIGTERM)
		<-signals
		draining.Store(true)
		listener.Close()
		time.Sleep(idleGrace)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		server.Shutdown(ctx)
		close(done)
	}()
	server.Serve(listener)
	<-done
}
