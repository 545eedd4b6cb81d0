// Command pause is the sandbox ("pause") container of the local cluster's
// real node (up.sh with CLIMATIK_REAL_NODE=1): it holds a pod's namespaces
// and does nothing else. Like Kubernetes' own pause (a small C program) it
// exits on SIGINT or SIGTERM and, as PID 1 of the pod's PID namespace when
// processes are shared, reaps orphaned children. Built statically by
// build.sh, so the image is this one file (no registry needed: up.sh
// imports it into the node's containerd).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		os.Stdout.WriteString("climatik pause\n")
		return
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		// Reap every child that has exited; children are only ever
		// orphans re-parented to us.
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
