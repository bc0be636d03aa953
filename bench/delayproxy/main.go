// delayproxy forwards TCP connections from -listen to -target and holds every chunk for -delay
// in each direction, preserving order per connection: a simulated network hop for the benchmark
// (bench/run.sh) on kernels without netem. With -delay 250us a request/response round trip gains
// about 0.5 ms, as a same-zone hop to a Redis cluster does.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"syscall"
	"time"
)

type chunk struct {
	due  time.Time
	data []byte
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (loopback)")
	target := flag.String("target", "", "address to forward to, e.g. 127.0.0.1:6379")
	delay := flag.Duration("delay", 250*time.Microsecond, "delay added to each chunk, each direction")
	flag.Parse()
	if *target == "" {
		log.Fatal("delayproxy: -target is required")
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("delayproxy: %v", err)
	}
	// The harness reads the bound address from this line (port 0 picks a free one).
	fmt.Fprintf(os.Stdout, "listening %s\n", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatalf("delayproxy: accept: %v", err)
		}
		go serve(c.(*net.TCPConn), *target, *delay)
	}
}

func serve(client *net.TCPConn, target string, delay time.Duration) {
	s, err := net.Dial("tcp", target)
	if err != nil {
		log.Printf("delayproxy: dial %s: %v", target, err)
		client.Close()
		return
	}
	server := s.(*net.TCPConn)
	client.SetNoDelay(true)
	server.SetNoDelay(true)
	go pipe(client, server, delay)
	go pipe(server, client, delay)
}

// pipe reads from src and writes each chunk to dst once it is `delay` old. The reader never
// waits for the writer (the channel is the in-flight "wire"), so the delay is latency, not a
// throughput cap.
func pipe(src, dst *net.TCPConn, delay time.Duration) {
	wire := make(chan chunk, 4096)
	go func() {
		defer close(wire)
		for {
			buf := make([]byte, 64<<10)
			n, err := src.Read(buf)
			if n > 0 {
				wire <- chunk{time.Now().Add(delay), buf[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range wire {
		waitUntil(c.due)
		if _, err := dst.Write(c.data); err != nil {
			break
		}
	}
	for range wire { // drain so the reader can exit
	}
	if err := dst.CloseWrite(); err != nil && err != io.EOF {
		dst.Close()
	}
	src.Close()
}

// waitUntil returns at `due`, within tens of microseconds. time.Sleep cannot: Go's timers wake
// through the netpoller with about 1 ms granularity (time.Sleep(250us) measured 1.08 ms here).
// nanosleep blocks this goroutine's thread (the runtime moves other goroutines to another thread)
// until just before `due`, and a short spin absorbs the kernel's timer slack (50 us by default).
func waitUntil(due time.Time) {
	const slack = 80 * time.Microsecond
	if d := time.Until(due) - slack; d > 0 {
		ts := syscall.NsecToTimespec(d.Nanoseconds())
		for syscall.Nanosleep(&ts, &ts) == syscall.EINTR {
		}
	}
	for time.Now().Before(due) {
	}
}
