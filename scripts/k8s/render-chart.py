#!/usr/bin/env python3
"""Renders charts/confman-operator as `helm install confman charts/confman-operator -n NS
--set image.repository=... --set image.tag=...` would, and prints the manifests (CRDs first,
from the chart's crds/ folder, then the templates). Runs in the venv of scripts/python-tools."""
import argparse
import glob
import os
import sys

import helm_python as helm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--namespace", required=True)
    p.add_argument("--repository", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--pull-policy", default="IfNotPresent")
    p.add_argument("--release", default="confman-operator")
    p.add_argument("--part", choices=["crds", "templates"], required=True)
    p.add_argument("--kube-version", default="v1.20.2", help="the target server's version (kubeVersion check)")
    a = p.parse_args()
    chart_dir = os.path.join(ROOT, "charts", "confman-operator")
    if a.part == "crds":
        for path in sorted(glob.glob(os.path.join(chart_dir, "crds", "*.yaml"))):
            with open(path) as f:
                sys.stdout.write("---\n" + f.read())
        return
    # What `helm install` checks against the server first: the chart's kubeVersion.
    report = helm.lint(chart_dir, strict=True, kube_version=a.kube_version)
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + report.get("errors", [])
    if problems:
        sys.exit(f"the chart does not install on Kubernetes {a.kube_version}: {problems}")
    chart = helm.Chart.load(chart_dir)
    values = {"image": {"repository": a.repository, "tag": a.tag, "pullPolicy": a.pull_policy}}
    chart.validate_schema(chart.merge_values(values))
    rendered = chart.render(values, name=a.release, namespace=a.namespace, is_install=True)
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt") or not text.strip():
            continue
        sys.stdout.write("---\n# Source: " + template + "\n" + text + "\n")


if __name__ == "__main__":
    main()
