"""Drives the official Kubernetes Python client against the test API server.

Run by Tests/KubeTests/RealClientTests.swift as
    python python_client_check.py KUBECONFIG MODE [ARGS]
Each mode prints what it saw, one fact per line, and exits non-zero with a message on failure.
Modes:
  basics             list, create, label selector, CRD + custom object, status patches
  watch-through-410  a watch with bookmarks that is cut, compacted, and recovered by re-listing
  lease IDENTITY SECONDS
                     leader election on a Lease with the client's LeaseLock; prints LEADING when it
                     leads, then dies (no release) after SECONDS
"""
import json
import os
import sys
import threading
import time
import urllib.request

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def fail(message):
    print("FAIL " + message, flush=True)
    sys.exit(1)


def basics(server):
    core = client.CoreV1Api()
    names = [n.metadata.name for n in core.list_namespace().items]
    if "default" not in names:
        fail("namespaces listed: %s" % names)
    print("namespaces ok", flush=True)
    for i, tier in enumerate(["a", "b", "a"]):
        core.create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="py-%d" % i, labels={"tier": tier}), data={"i": str(i)}))
    selected = core.list_namespaced_config_map("default", label_selector="tier=a").items
    if sorted(c.metadata.name for c in selected) != ["py-0", "py-2"]:
        fail("label selector returned %s" % [c.metadata.name for c in selected])
    try:
        core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py-0")))
        fail("a duplicate create succeeded")
    except ApiException as e:
        if e.status != 409:
            fail("duplicate create: %s" % e.status)
    print("configmaps ok", flush=True)

    ext = client.ApiextensionsV1Api()
    ext.create_custom_resource_definition({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}})
    crd = ext.read_custom_resource_definition("gadgets.example.com")
    established = [c for c in crd.status.conditions if c.type == "Established" and c.status == "True"]
    if not established:
        fail("the CRD is not Established")
    custom = client.CustomObjectsApi()
    custom.create_namespaced_custom_object("example.com", "v1", "default", "gadgets",
                                           {"apiVersion": "example.com/v1", "kind": "Gadget",
                                            "metadata": {"name": "g1"}, "spec": {"size": 1}})
    patched = custom.patch_namespaced_custom_object_status("example.com", "v1", "default", "gadgets", "g1",
                                                           {"status": {"phase": "Ready"}})
    if patched["status"]["phase"] != "Ready" or patched["metadata"]["generation"] != 1:
        fail("status patch gave %s" % json.dumps(patched))
    again = custom.patch_namespaced_custom_object("example.com", "v1", "default", "gadgets", "g1", {"spec": {"size": 2}})
    if again["metadata"]["generation"] != 2 or again["status"]["phase"] != "Ready":
        fail("spec patch gave %s" % json.dumps(again))
    print("custom status patch ok", flush=True)

    apps = client.AppsV1Api()
    apps.create_namespaced_deployment("default", client.V1Deployment(
        metadata=client.V1ObjectMeta(name="py-web"),
        spec=client.V1DeploymentSpec(
            replicas=2, selector=client.V1LabelSelector(match_labels={"app": "py-web"}),
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels={"app": "py-web"}),
                                              spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="nginx")])))))
    status = apps.patch_namespaced_deployment_status("py-web", "default", {"status": {"replicas": 2, "readyReplicas": 1}})
    if status.status.ready_replicas != 1 or status.metadata.generation != 1:
        fail("deployment status patch gave %s / %s" % (status.status, status.metadata.generation))
    scale = apps.read_namespaced_deployment_scale("py-web", "default")
    if scale.spec.replicas != 2 or scale.status.replicas != 2:
        fail("scale %s" % scale)
    print("deployment status patch ok", flush=True)


def admin(server, action):
    request = urllib.request.Request(server + "/testing/" + action, method="POST", data=b"")
    urllib.request.urlopen(request).read()


def watch_through_410(server):
    core = client.CoreV1Api()
    listed = core.list_namespaced_config_map("default")
    version = listed.metadata.resource_version
    seen = {}
    bookmarks = 0
    relists = 0

    def writer():
        time.sleep(0.3)
        core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="w-1")))
        time.sleep(1.5)  # bookmarks arrive meanwhile
        # The revision moves past what the watch has seen, is compacted there, and the watch is cut,
        # all at once: its resume meets a 410. w-2, written meanwhile, comes from the re-list.
        admin(server, "expire-watches")
        core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="w-2")))
        time.sleep(1.0)
        core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="w-3")))

    threading.Thread(target=writer, daemon=True).start()
    deadline = time.time() + 20
    while time.time() < deadline and "w-3" not in seen:
        w = watch.Watch()
        try:
            for event in w.stream(core.list_namespaced_config_map, "default", resource_version=version,
                                  allow_watch_bookmarks=True):
                if event["type"] == "BOOKMARK":
                    bookmarks += 1
                    version = event["raw_object"]["metadata"]["resourceVersion"]
                    continue
                name = event["object"].metadata.name
                seen[name] = event["type"]
                version = event["object"].metadata.resource_version
                if name == "w-3":
                    w.stop()
                    break
        except ApiException as e:
            if e.status != 410:
                raise
            print("watch got 410", flush=True)
            relists += 1
            fresh = core.list_namespaced_config_map("default")
            for item in fresh.items:
                seen.setdefault(item.metadata.name, "LISTED")
            version = fresh.metadata.resource_version
    if "w-1" not in seen or "w-2" not in seen or seen.get("w-3") != "ADDED":
        fail("saw %s" % seen)
    if bookmarks == 0:
        fail("no bookmark arrived")
    if relists == 0:
        fail("no 410 was met")
    print("bookmarks %d" % bookmarks, flush=True)
    print("watch through 410 ok: %s" % json.dumps(seen, sort_keys=True), flush=True)


def lease(identity, seconds):
    from kubernetes.leaderelection import electionconfig, leaderelection
    from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

    def leading():
        print("LEADING " + identity, flush=True)
        time.sleep(seconds)
        print("DYING " + identity, flush=True)
        os._exit(0)

    lock = LeaseLock("eaas-controller", "default", identity)
    config_ = electionconfig.Config(lock, lease_duration=3, renew_deadline=2, retry_period=1,
                                    onstarted_leading=leading, onstopped_leading=lambda: print("STOPPED " + identity, flush=True))
    leaderelection.LeaderElection(config_).run()


def main():
    kubeconfig, mode = sys.argv[1], sys.argv[2]
    config.load_kube_config(config_file=kubeconfig)
    server = client.Configuration.get_default_copy().host
    if mode == "basics":
        basics(server)
    elif mode == "watch-through-410":
        watch_through_410(server)
        # The watch's pool threads can abort the interpreter's teardown (SIGABRT seen under load):
        # the check has passed, so leave without it.
        sys.stdout.flush()
        os._exit(0)
    elif mode == "lease":
        lease(sys.argv[3], float(sys.argv[4]))
    else:
        fail("unknown mode " + mode)


if __name__ == "__main__":
    main()
