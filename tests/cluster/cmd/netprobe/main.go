// Command netprobe is the workload of test-real-node.sh: a static binary,
// alone in an image, that checks the real node's network from inside pods.
//
//	netprobe serve ADDR   HTTP on ADDR: "/" answers "netprobe POD",
//	                      "/metrics" a Prometheus gauge netprobe_up{pod=...}
//	netprobe check URL    GETs the API server's /version through the
//	                      "kubernetes" Service (service-account token and
//	                      CA), then URL; exits non-zero if either fails
//	netprobe version      prints "netprobe" (for kubectl exec)
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func main() {
	if len(os.Args) < 2 {
		fail("usage: netprobe serve ADDR | check URL | version")
	}
	switch os.Args[1] {
	case "serve":
		if len(os.Args) != 3 {
			fail("usage: netprobe serve ADDR")
		}
		serve(os.Args[2])
	case "check":
		if len(os.Args) != 3 {
			fail("usage: netprobe check URL")
		}
		check(os.Args[2])
	case "version":
		fmt.Println("netprobe")
	default:
		fail("unknown command " + os.Args[1])
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "netprobe:", msg)
	os.Exit(1)
}

func serve(addr string) {
	pod, _ := os.Hostname()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "netprobe %s\n", pod)
	})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprintf(w, "# TYPE netprobe_up gauge\nnetprobe_up{pod=%q} 1\n", pod)
	})
	fmt.Printf("netprobe serving on %s\n", addr)
	fail((&http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}).ListenAndServe().Error())
}

func check(url string) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		fail("KUBERNETES_SERVICE_HOST/PORT not set")
	}
	caPEM, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		fail(err.Error())
	}
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		fail(err.Error())
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		fail("no certificate in ca.crt")
	}
	api := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	req, _ := http.NewRequest(http.MethodGet, "https://"+net.JoinHostPort(host, port)+"/version", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	body := get(api, req)
	fmt.Printf("apiserver %s: %s\n", host, strings.Join(strings.Fields(body), " "))

	req, _ = http.NewRequest(http.MethodGet, url, nil)
	fmt.Printf("%s: %s", url, get(&http.Client{Timeout: 10 * time.Second}, req))
}

func get(c *http.Client, req *http.Request) string {
	resp, err := c.Do(req)
	if err != nil {
		fail(err.Error())
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		fail(err.Error())
	}
	if resp.StatusCode != http.StatusOK {
		fail(fmt.Sprintf("%s: %s: %s", req.URL, resp.Status, body))
	}
	return string(body)
}
