// Command nodekeeper stands in for the kubelets of a local control plane that
// has no real nodes: it registers fake GPU Nodes and keeps them Ready (Lease
// renewals and NodeReady heartbeats), so the scheduler places pods on them
// and the node lifecycle controller never taints them or evicts their pods.
//
// With --fake-kubelet (the default) it also plays the kubelet's part in a
// pod's life: a pod bound to one of its nodes is reported Running and Ready,
// and a pod being deleted is removed at once. Without that, graceful
// deletion would wait forever for a kubelet, and so would namespace deletion.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
)

const leaseNamespace = "kube-node-lease"

type config struct {
	kubeconfig    string
	nodes         int
	gpusPerNode   int
	prefix        string
	interval      time.Duration
	leaseDuration time.Duration
	gpuProduct    string
	kubeletVer    string
	fakeKubelet   bool
}

func main() {
	var c config
	flag.StringVar(&c.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "admin kubeconfig")
	flag.IntVar(&c.nodes, "nodes", 3, "number of fake GPU nodes")
	flag.IntVar(&c.gpusPerNode, "gpus-per-node", 4, "nvidia.com/gpu capacity of each node")
	flag.StringVar(&c.prefix, "prefix", "gpu-node-", "node name prefix; nodes are <prefix>0..N-1")
	flag.DurationVar(&c.interval, "interval", 10*time.Second, "heartbeat (lease renewal and status) interval")
	flag.DurationVar(&c.leaseDuration, "lease-duration", 40*time.Second, "node lease duration")
	flag.StringVar(&c.gpuProduct, "gpu-product", "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.product label")
	flag.StringVar(&c.kubeletVer, "kubelet-version", "v1.34.4", "kubelet version reported in node info")
	flag.BoolVar(&c.fakeKubelet, "fake-kubelet", true, "report bound pods Running and finish their deletion")
	flag.Parse()
	if c.nodes < 0 || c.gpusPerNode < 0 {
		log.Fatalf("--nodes and --gpus-per-node must not be negative")
	}

	restConfig, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		log.Fatalf("loading kubeconfig %q: %v", c.kubeconfig, err)
	}
	restConfig.UserAgent = "nodekeeper"
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		log.Fatalf("creating client: %v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	k := &keeper{cfg: c, client: client}
	if c.fakeKubelet {
		go k.runFakeKubelet(ctx)
	}
	k.run(ctx)
	log.Printf("stopping")
}

type keeper struct {
	cfg    config
	client kubernetes.Interface
}

func (k *keeper) nodeName(i int) string { return fmt.Sprintf("%s%d", k.cfg.prefix, i) }

func (k *keeper) ownsNode(name string) bool {
	for i := 0; i < k.cfg.nodes; i++ {
		if k.nodeName(i) == name {
			return true
		}
	}
	return false
}

// run heartbeats every node until ctx ends. Errors are logged and retried on
// the next tick: the API server may be restarting.
func (k *keeper) run(ctx context.Context) {
	ticker := time.NewTicker(k.cfg.interval)
	defer ticker.Stop()
	for {
		for i := 0; i < k.cfg.nodes; i++ {
			name := k.nodeName(i)
			if err := k.heartbeat(ctx, name); err != nil && ctx.Err() == nil {
				log.Printf("node %s: %v", name, err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

func (k *keeper) heartbeat(ctx context.Context, name string) error {
	if err := k.ensureNode(ctx, name); err != nil {
		return fmt.Errorf("registering: %w", err)
	}
	if err := k.renewLease(ctx, name); err != nil {
		return fmt.Errorf("renewing lease: %w", err)
	}
	if err := k.updateStatus(ctx, name); err != nil {
		return fmt.Errorf("updating status: %w", err)
	}
	return nil
}

func (k *keeper) resources() corev1.ResourceList {
	return corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse("32"),
		corev1.ResourceMemory:           resource.MustParse("256Gi"),
		corev1.ResourcePods:             resource.MustParse("110"),
		corev1.ResourceEphemeralStorage: resource.MustParse("1Ti"),
		"nvidia.com/gpu":                *resource.NewQuantity(int64(k.cfg.gpusPerNode), resource.DecimalSI),
	}
}

// ensureNode creates the Node if it does not exist (also after someone
// deleted it); an existing Node's labels are left as they are, so tests may
// relabel nodes.
func (k *keeper) ensureNode(ctx context.Context, name string) error {
	_, err := k.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err == nil || !apierrors.IsNotFound(err) {
		return err
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: name,
			Labels: map[string]string{
				"kubernetes.io/hostname":           name,
				"kubernetes.io/os":                 "linux",
				"kubernetes.io/arch":               "amd64",
				"beta.kubernetes.io/os":            "linux",
				"beta.kubernetes.io/arch":          "amd64",
				"node.kubernetes.io/instance-type": "p5.48xlarge",
				"nvidia.com/gpu.present":           "true",
				"nvidia.com/gpu.product":           k.cfg.gpuProduct,
				"nvidia.com/gpu.count":             fmt.Sprint(k.cfg.gpusPerNode),
				"nvidia.com/gpu.memory":            "81559",
				"climatik.io/fake-node":            "true",
			},
		},
	}
	if _, err := k.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	log.Printf("registered node %s", name)
	return nil
}

func (k *keeper) renewLease(ctx context.Context, name string) error {
	leases := k.client.CoordinationV1().Leases(leaseNamespace)
	now := metav1.NewMicroTime(time.Now())
	lease, err := leases.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		lease = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: leaseNamespace},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity:       ptr.To(name),
				LeaseDurationSeconds: ptr.To(int32(k.cfg.leaseDuration.Seconds())),
				RenewTime:            &now,
			},
		}
		// Owned by the Node, as the kubelet does, so deleting the Node
		// collects its Lease.
		if node, err := k.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{}); err == nil {
			lease.OwnerReferences = []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID,
			}}
		}
		_, err = leases.Create(ctx, lease, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	lease.Spec.HolderIdentity = ptr.To(name)
	lease.Spec.LeaseDurationSeconds = ptr.To(int32(k.cfg.leaseDuration.Seconds()))
	lease.Spec.RenewTime = &now
	_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	return err
}

func (k *keeper) updateStatus(ctx context.Context, name string) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := k.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		res := k.resources()
		node.Status.Capacity = res
		node.Status.Allocatable = res.DeepCopy()
		node.Status.Phase = corev1.NodeRunning
		node.Status.Addresses = []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "127.0.0.1"},
			{Type: corev1.NodeHostName, Address: name},
		}
		node.Status.NodeInfo = corev1.NodeSystemInfo{
			MachineID:               name,
			SystemUUID:              name,
			BootID:                  name,
			KernelVersion:           "6.1.0",
			OSImage:                 "Debian GNU/Linux 12 (bookworm) (fake)",
			ContainerRuntimeVersion: "fake://1.0.0",
			KubeletVersion:          k.cfg.kubeletVer,
			OperatingSystem:         "linux",
			Architecture:            "amd64",
		}
		node.Status.Conditions = mergeConditions(node.Status.Conditions, now, []corev1.NodeCondition{
			{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "nodekeeper is posting ready status"},
			{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory", Message: "fake node"},
			{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure", Message: "fake node"},
			{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID", Message: "fake node"},
			{Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse, Reason: "RouteCreated", Message: "fake node"},
		})
		_, err = k.client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
		return err
	})
}

// mergeConditions sets each wanted condition's heartbeat to now, keeping its
// transition time when its status did not change.
func mergeConditions(existing []corev1.NodeCondition, now metav1.Time, wanted []corev1.NodeCondition) []corev1.NodeCondition {
	out := make([]corev1.NodeCondition, 0, len(wanted))
	for _, w := range wanted {
		w.LastHeartbeatTime = now
		w.LastTransitionTime = now
		for _, e := range existing {
			if e.Type == w.Type && e.Status == w.Status && !e.LastTransitionTime.IsZero() {
				w.LastTransitionTime = e.LastTransitionTime
			}
		}
		out = append(out, w)
	}
	return out
}

// runFakeKubelet watches pods bound to our nodes: new ones are reported
// Running and Ready, deleted ones are removed.
func (k *keeper) runFakeKubelet(ctx context.Context) {
	factory := informers.NewSharedInformerFactory(k.client, 30*time.Second)
	podInformer := factory.Core().V1().Pods().Informer()
	work := make(chan *corev1.Pod, 1024)
	enqueue := func(obj interface{}) {
		pod, ok := obj.(*corev1.Pod)
		if !ok || !k.ownsNode(pod.Spec.NodeName) {
			return
		}
		select {
		case work <- pod:
		case <-ctx.Done():
		}
	}
	_, err := podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj interface{}) { enqueue(obj) },
	})
	if err != nil {
		log.Printf("fake kubelet: %v", err)
		return
	}
	factory.Start(ctx.Done())
	for {
		select {
		case <-ctx.Done():
			return
		case pod := <-work:
			if err := k.syncPod(ctx, pod); err != nil && ctx.Err() == nil && !apierrors.IsNotFound(err) {
				log.Printf("pod %s/%s: %v", pod.Namespace, pod.Name, err)
			}
		}
	}
}

func (k *keeper) syncPod(ctx context.Context, pod *corev1.Pod) error {
	pods := k.client.CoreV1().Pods(pod.Namespace)
	if pod.DeletionTimestamp != nil {
		// The kubelet would stop the containers and then delete the pod
		// with a zero grace period; there are no containers.
		return pods.Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: ptr.To(int64(0)),
			Preconditions:      &metav1.Preconditions{UID: &pod.UID},
		})
	}
	if pod.Status.Phase != corev1.PodPending && pod.Status.Phase != "" {
		return nil
	}
	now := metav1.Now()
	p := pod.DeepCopy()
	p.Status.Phase = corev1.PodRunning
	p.Status.HostIP = "127.0.0.1"
	p.Status.HostIPs = []corev1.HostIP{{IP: "127.0.0.1"}}
	p.Status.StartTime = &now
	p.Status.Conditions = []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
	}
	p.Status.ContainerStatuses = nil
	for _, c := range pod.Spec.Containers {
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{
			Name:        c.Name,
			Image:       c.Image,
			ImageID:     "fake://" + c.Image,
			ContainerID: "fake://" + strings.ReplaceAll(string(pod.UID), "-", "") + "-" + c.Name,
			Ready:       true,
			Started:     ptr.To(true),
			State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	_, err := pods.UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		return nil // a newer version is on its way through the informer
	}
	return err
}
