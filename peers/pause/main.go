// The sandbox (pause) image's program for the test node: waits for SIGTERM or SIGINT and exits 0.
// A stand-in for registry.k8s.io/pause (which cannot be pulled here), built static by
// `cargo xtask setup` (xtask/src/images.rs) and tagged registry.k8s.io/pause:3.10.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
