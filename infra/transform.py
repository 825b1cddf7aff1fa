"""Transforms the SAM template into plain CloudFormation, offline (no AWS
calls), and prints it as JSON. Used by the wiring test (tests/tests/infra.rs).

    python infra/transform.py infra/template.yaml
"""
import json
import os
import sys

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class NoManagedPolicies:
    """The template uses no managed policies by name: nothing to look up."""

    def load(self):
        return {}


os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
with open(sys.argv[1]) as f:
    template = yaml_parse(f.read())
# What `sam package` does: local code folders become S3 locations.
for name, resource in template["Resources"].items():
    if resource["Type"] == "AWS::Serverless::Function":
        resource["Properties"]["CodeUri"] = f"s3://packaged-code/{name}.zip"
print(json.dumps(transform(template, {}, NoManagedPolicies()), default=str, indent=1))
