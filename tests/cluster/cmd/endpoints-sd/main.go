// Command endpoints-sd is the local cluster's Prometheus' Kubernetes service
// discovery: Debian's Prometheus is built without kubernetes_sd_configs, so
// this watches the EndpointSlices of Services with a label
// (climatik.io/metrics=true; an EndpointSlice carries its Service's labels)
// and writes their endpoints on a port of a given name ("metrics") as one
// file for Prometheus' file service discovery, each target labelled with
// namespace, service, pod and node, as relabelled kubernetes_sd_configs
// (role: endpoints) would give them.
//
//	endpoints-sd --kubeconfig FILE --file DIR/endpoints.json \
//	  [--selector climatik.io/metrics=true] [--port-name metrics]
//
// Run by prometheus-up.sh for a cluster with a real node (up.sh with
// CLIMATIK_REAL_NODE=1). The file is written through a temporary file and
// a rename, only when its content changes.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// group is one target group of Prometheus' file service discovery.
type group struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

func main() {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig")
	file := flag.String("file", "", "file to write the target groups to")
	selector := flag.String("selector", "climatik.io/metrics=true", "label selector of the Services (their EndpointSlices)")
	portName := flag.String("port-name", "metrics", "name of the endpoint port to scrape")
	flag.Parse()
	if *file == "" {
		log.Fatal("--file is required")
	}
	if _, err := labels.Parse(*selector); err != nil {
		log.Fatalf("--selector: %v", err)
	}
	restConfig, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatalf("loading kubeconfig %q: %v", *kubeconfig, err)
	}
	restConfig.UserAgent = "endpoints-sd"
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		log.Fatalf("creating client: %v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = *selector }))
	informer := factory.Discovery().V1().EndpointSlices()
	changed := make(chan struct{}, 1)
	notify := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	if _, err := informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { notify() },
		UpdateFunc: func(any, any) { notify() },
		DeleteFunc: func(any) { notify() },
	}); err != nil {
		log.Fatalf("adding event handler: %v", err)
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), informer.Informer().HasSynced) {
		return
	}
	log.Printf("watching EndpointSlices (%s), port %q, writing %s", *selector, *portName, *file)

	var last []byte
	notify()
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
		// Let a burst of changes (a rollout) settle into one write.
		time.Sleep(200 * time.Millisecond)
		slices, err := informer.Lister().List(labels.Everything())
		if err != nil {
			log.Printf("listing EndpointSlices: %v", err)
			continue
		}
		data, err := json.MarshalIndent(targetGroups(slices, *portName), "", "  ")
		if err != nil {
			log.Fatalf("encoding targets: %v", err)
		}
		if bytes.Equal(data, last) {
			continue
		}
		if err := writeFile(*file, data); err != nil {
			log.Printf("writing %s: %v", *file, err)
			notify()
			continue
		}
		last = data
		log.Printf("%d targets", bytes.Count(data, []byte(`"targets"`)))
	}
}

// targetGroups -> one group per endpoint (address and port), sorted, so the
// same endpoints always give the same file.
func targetGroups(slices []*discoveryv1.EndpointSlice, portName string) []group {
	groups := []group{}
	for _, s := range slices {
		service := s.Labels[discoveryv1.LabelServiceName]
		for _, p := range s.Ports {
			if p.Name == nil || *p.Name != portName || p.Port == nil {
				continue
			}
			for _, e := range s.Endpoints {
				for _, addr := range e.Addresses {
					l := map[string]string{"namespace": s.Namespace, "service": service}
					if e.TargetRef != nil && e.TargetRef.Kind == "Pod" {
						l["pod"] = e.TargetRef.Name
					}
					if e.NodeName != nil {
						l["node"] = *e.NodeName
					}
					groups = append(groups, group{
						Targets: []string{net.JoinHostPort(addr, strconv.Itoa(int(*p.Port)))},
						Labels:  l,
					})
				}
			}
		}
	}
	sort.Slice(groups, func(i, j int) bool {
		a, b := groups[i], groups[j]
		if a.Targets[0] != b.Targets[0] {
			return a.Targets[0] < b.Targets[0]
		}
		return fmt.Sprint(a.Labels) < fmt.Sprint(b.Labels)
	})
	return groups
}

func writeFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".endpoints-sd-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
