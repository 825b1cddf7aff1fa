"""What `make deploy` checks before `sam deploy`, and how it hands the
parameters file to SAM. Runs with the Python of .local/venv-infra (the SAM
CLI's: it has the SAM translator's YAML reader and boto3).

    deploy-check.py check [--params FILE] [--samconfig FILE]
        Refuses (exit 1) a parameters file naming a parameter the template
        does not have, and a QueueVisibilityTimeoutSeconds shorter than
        6 x WorkerTimeoutSeconds — CloudFormation's Rules cannot refuse it
        (they compare strings; they have no arithmetic). Warns when reserved
        concurrency would leave the account fewer than 100 unreserved
        executions (AWS refuses that). Without --params, the values come from
        the samconfig file's parameter_overrides (a guided deploy's), then
        the template's defaults.

    deploy-check.py value FILE KEY
        Prints KEY's value in FILE (nothing when it is not there).

    deploy-check.py overrides FILE
        Prints FILE's KEY=VALUE lines as `sam deploy --parameter-overrides`
        arguments, shell-quoted, each value quoted for SAM (a value may hold
        spaces, as `rate(6 hours)` does, or commas, as a list of ARNs does).

The parameters file: one KEY=VALUE a line; blank lines and lines starting
with # are skipped; the value is the rest of the line (surrounding quotes
removed). A key given twice is refused.
"""
import os
import re
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.path.join(ROOT, "infra", "template.yaml")
# AWS keeps this many executions unreserved in every account and region.
UNRESERVED_MIN = 100
RESERVED = ("WebhookReservedConcurrency", "ReconcileReservedConcurrency")


def fail(message):
    print(f"[deploy-check] {message}", file=sys.stderr)
    sys.exit(1)


def template_parameters():
    from samtranslator.yaml_helper import yaml_parse

    with open(TEMPLATE) as f:
        return yaml_parse(f.read())["Parameters"]


def read_params(path):
    values = {}
    try:
        lines = open(path).read().splitlines()
    except OSError as e:
        fail(f"cannot read the parameters file {path}: {e.strerror}")
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9]+)\s*=\s*(.*)", text)
        if not m:
            fail(f"{path}:{number}: not KEY=VALUE: {line!r}")
        key, value = m.group(1), m.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if key in values:
            fail(f"{path}:{number}: {key} is given twice")
        values[key] = value
    return values


def samconfig_overrides(path):
    """parameter_overrides of the samconfig file's default deploy section."""
    if not path or not os.path.isfile(path):
        return {}
    import tomllib

    with open(path, "rb") as f:
        config = tomllib.load(f)
    raw = config.get("default", {}).get("deploy", {}).get("parameters", {}).get("parameter_overrides", "")
    if isinstance(raw, list):
        raw = " ".join(raw)
    values = {}
    for key, quoted, plain in re.findall(r'([A-Za-z0-9]+)=(?:"((?:\\.|[^"\\])*)"|(\S*))', raw):
        values[key] = re.sub(r"\\(.)", r"\1", quoted) if quoted else plain
    return values


def number(values, parameters, name):
    raw = values.get(name, parameters[name].get("Default"))
    try:
        return int(str(raw))
    except ValueError:
        fail(f"{name} must be a number, not {raw!r}")


def check(params, samconfig):
    parameters = template_parameters()
    if params:
        values = read_params(params)
        origin = params
    else:
        values = samconfig_overrides(samconfig)
        origin = samconfig if values else "the template's defaults"
    unknown = sorted(set(values) - set(parameters))
    if unknown:
        fail(f"{origin}: {', '.join(unknown)}: no such template parameter (infra/template.yaml has {', '.join(sorted(parameters))})")

    timeout = number(values, parameters, "WorkerTimeoutSeconds")
    visibility = number(values, parameters, "QueueVisibilityTimeoutSeconds")
    if visibility < 6 * timeout:
        fail(
            f"QueueVisibilityTimeoutSeconds is {visibility}, shorter than 6 x WorkerTimeoutSeconds ({timeout}): "
            f"set it to at least {6 * timeout} (AWS's guidance for an SQS event source: a message must not "
            f"reappear on the queue while Lambda still works on it or retries its batch) — in {origin}"
        )

    reserving = {name: number(values, parameters, name) for name in RESERVED}
    reserving = {name: n for name, n in reserving.items() if n > 0}
    if reserving:
        warn_concurrency(reserving)
    print(
        f"[deploy-check] ok: QueueVisibilityTimeoutSeconds {visibility} >= 6 x WorkerTimeoutSeconds {timeout}"
        + (f"; reserving {', '.join(f'{k}={v}' for k, v in reserving.items())}" if reserving else "; no concurrency reserved")
    )


def warn_concurrency(reserving):
    """A warning, not a refusal: on an update the stack's own reservations
    are already counted, and the account may have asked for more."""
    total = sum(reserving.values())
    try:
        import boto3

        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        settings = boto3.client("lambda", region_name=region).get_account_settings()
    except Exception as e:  # no credentials, no network: say it, go on
        print(f"[deploy-check] warning: cannot read the account's Lambda concurrency ({e}); reserving {total}", file=sys.stderr)
        return
    limit = settings["AccountLimit"]["ConcurrentExecutions"]
    unreserved = settings["AccountLimit"]["UnreservedConcurrentExecutions"]
    if unreserved - total < UNRESERVED_MIN:
        print(
            f"[deploy-check] warning: the account's concurrency quota is {limit}, {unreserved} unreserved; "
            f"reserving {total} more ({', '.join(f'{k}={v}' for k, v in reserving.items())}) leaves "
            f"{unreserved - total}, below the {UNRESERVED_MIN} AWS keeps unreserved: the deploy will fail "
            f"(set them to 0, or ask for a higher quota in Service Quotas, 'Concurrent executions')",
            file=sys.stderr,
        )


def overrides(params):
    out = []
    for key, value in read_params(params).items():
        if "\\" in value:
            fail(f"{params}: {key}: a backslash cannot be passed to SAM's --parameter-overrides")
        quoted = value.replace('"', '\\"')
        out.append(shlex.quote(f'{key}="{quoted}"'))
    print(" ".join(out))


def main(argv):
    if len(argv) >= 1 and argv[0] == "overrides" and len(argv) == 2:
        return overrides(argv[1])
    if len(argv) >= 1 and argv[0] == "value" and len(argv) == 3:
        return print(read_params(argv[1]).get(argv[2], ""))
    if len(argv) >= 1 and argv[0] == "check":
        args = dict(zip(argv[1::2], argv[2::2]))
        if len(argv[1:]) % 2 or set(args) - {"--params", "--samconfig"}:
            fail(f"usage: {sys.argv[0]} check [--params FILE] [--samconfig FILE]")
        return check(args.get("--params") or None, args.get("--samconfig"))
    fail(f"usage: {sys.argv[0]} check [--params FILE] [--samconfig FILE] | value FILE KEY | overrides FILE")


if __name__ == "__main__":
    main(sys.argv[1:])
