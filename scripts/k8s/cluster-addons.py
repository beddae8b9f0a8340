#!/usr/bin/env python3
"""The two add-ons the test cluster needs besides Kubernetes itself (scripts/k8s-cluster starts it).

* Cluster DNS records: a hosts file for dnsmasq (`--hostsdir`, re-read on change) with what
  CoreDNS's kubernetes plugin serves: `<svc>.<ns>.svc.cluster.local` -> ClusterIP; for headless
  Services the ready endpoint addresses, and `<hostname>.<svc>.<ns>.svc.cluster.local` for
  endpoints that carry a hostname (StatefulSet pods).
* A dynamic provisioner for one StorageClass, as rancher's local-path-provisioner does: a claim
  the PV controller hands to us (annotation `volume.beta.kubernetes.io/storage-provisioner`)
  gets a hostPath PersistentVolume on a fresh directory, pre-bound to the claim and pinned to the
  node the scheduler chose; a Released volume with reclaim policy Delete has its directory and
  object removed. Binding, protection and retention are the real PV controller's.

Polls the API every half second (a test cluster; no client library needed). Standard library only.
"""
import argparse
import json
import os
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request

PROVISIONER = "confman.io/local-path"


class Api:
    def __init__(self, server, ca, token):
        self.server = server.rstrip("/")
        self.ctx = ssl.create_default_context(cafile=ca)
        self.token = token

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", "Bearer " + self.token)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, context=self.ctx, timeout=10) as resp:
            return json.loads(resp.read() or b"{}")

    def items(self, path):
        return self.call("GET", path).get("items", [])


def dns_records(api, domain):
    lines = []
    services = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in api.items("/api/v1/services")}
    for (ns, name), svc in sorted(services.items()):
        ip = svc["spec"].get("clusterIP")
        if ip and ip != "None":
            lines.append(f"{ip} {name}.{ns}.svc.{domain}")
    for ep in api.items("/api/v1/endpoints"):
        ns, name = ep["metadata"]["namespace"], ep["metadata"]["name"]
        svc = services.get((ns, name))
        if svc is None or svc["spec"].get("clusterIP") != "None":
            continue
        for subset in ep.get("subsets") or []:
            for addr in subset.get("addresses") or []:
                lines.append(f"{addr['ip']} {name}.{ns}.svc.{domain}")
                if addr.get("hostname"):
                    lines.append(f"{addr['ip']} {addr['hostname']}.{name}.{ns}.svc.{domain}")
    return "\n".join(sorted(set(lines))) + "\n"


def write_if_changed(path, text):
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except FileNotFoundError:
        pass
    # A dotfile: dnsmasq's --hostsdir skips them, so it never reads a half-written file.
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def each(what, items, act):
    """Applies `act` to every item; one that fails is logged and skipped, the rest go on."""
    for item in items:
        try:
            act(item)
        except Exception as e:  # noqa: BLE001 - a bad object must not stop the others
            name = (item.get("metadata") or {}).get("name", "?")
            log(f"{what} {name}: {type(e).__name__}: {e}")


def provision(api, root, storage_class):
    each("provision", api.items("/api/v1/persistentvolumeclaims"), lambda pvc: provision_one(api, root, storage_class, pvc))


def provision_one(api, root, storage_class, pvc):
    meta, spec = pvc["metadata"], pvc["spec"]
    ann = meta.get("annotations") or {}
    if spec.get("volumeName") or pvc.get("status", {}).get("phase") != "Pending":
        return
    if ann.get("volume.beta.kubernetes.io/storage-provisioner") != PROVISIONER:
        return
    if spec.get("storageClassName") != storage_class:
        return
    if spec.get("volumeMode", "Filesystem") != "Filesystem":
        raise ValueError("only volumeMode Filesystem is provisioned")
    node = ann.get("volume.kubernetes.io/selected-node")
    pv_name = "pvc-" + meta["uid"]
    path = os.path.join(root, f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}")
    os.makedirs(path, exist_ok=True)
    # Any uid may write, as with local-path-provisioner: the pod's fsGroup does not apply
    # to hostPath volumes.
    os.chmod(path, 0o777)
    sc = api.call("GET", f"/apis/storage.k8s.io/v1/storageclasses/{storage_class}")
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy", "Delete"),
            "storageClassName": storage_class,
            "volumeMode": spec.get("volumeMode", "Filesystem"),
            "hostPath": {"path": path, "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }
    if node:
        pv["spec"]["nodeAffinity"] = {
            "required": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}
                ]
            }
        }
    try:
        api.call("POST", "/api/v1/persistentvolumes", pv)
        log(f"provisioned {pv_name} at {path} for {meta['namespace']}/{meta['name']}")
    except urllib.error.HTTPError as e:
        if e.code != 409:
            raise


def reclaim(api, root):
    each("reclaim", api.items("/api/v1/persistentvolumes"), lambda pv: reclaim_one(api, root, pv))


def reclaim_one(api, root, pv):
    meta, spec = pv["metadata"], pv["spec"]
    if (meta.get("annotations") or {}).get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
        return
    if pv.get("status", {}).get("phase") != "Released" or spec.get("persistentVolumeReclaimPolicy") != "Delete":
        return
    path = (spec.get("hostPath") or {}).get("path", "")
    if path.startswith(root.rstrip("/") + "/"):
        shutil.rmtree(path, ignore_errors=True)
    try:
        api.call("DELETE", f"/api/v1/persistentvolumes/{meta['name']}")
        log(f"deleted released {meta['name']} and {path}")
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--hosts-file", required=True)
    p.add_argument("--volume-root", required=True)
    p.add_argument("--storage-class", required=True)
    p.add_argument("--domain", default="cluster.local")
    a = p.parse_args()
    with open(a.token_file) as f:
        api = Api(a.server, a.ca, f.read().strip())
    root = os.path.abspath(a.volume_root)
    while True:
        try:
            write_if_changed(a.hosts_file, dns_records(api, a.domain))
            provision(api, root, a.storage_class)
            reclaim(api, root)
        except Exception as e:  # noqa: BLE001 - the loop must outlive any one bad answer
            log(f"retrying after {type(e).__name__}: {e}")
        time.sleep(0.5)


if __name__ == "__main__":
    main()
