"""Promotion gates: one small class per check, each with one method,
`evaluate(version, target_stage)`, returning pass, fail or not applicable with a message and
the numbers it read. They run when a request is made and again before each approval; the
results are stored on the request as part of its evidence. docs/registry.md says what each reads.
"""
import hashlib
from dataclasses import asdict, dataclass, field


from lifecycle.datasets.models import DatasetVersion, Example
from lifecycle.registry import cards, lineage

PASS, FAIL, NOT_APPLICABLE = "pass", "fail", "not_applicable"


@dataclass
class GateResult:
    gate: str
    status: str
    message: str
    numbers: dict = field(default_factory=dict)

    def as_dict(self):
        return asdict(self)


class Gate:
    name = ""
    title = ""

    def evaluate(self, version, target_stage):
        raise NotImplementedError

    def result(self, status, message, **numbers):
        return GateResult(self.name, status, message, numbers)


def _settings(version, target_stage):
    return version.model.gate_settings.get(str(target_stage)) or {}


class MetricThresholds(Gate):
    """Each metric the model's settings name for the target stage against its min or max."""

    name, title = "metrics", "Metric thresholds"

    def evaluate(self, version, target_stage):
        wanted = _settings(version, target_stage).get("metrics") or {}
        if not wanted:
            return self.result(NOT_APPLICABLE, f"No metric thresholds are set for {target_stage}.")
        failures, read = [], {}
        for metric, bound in sorted(wanted.items()):
            value = version.metrics.get(metric)
            read[metric] = {"value": value, **bound}
            if not isinstance(value, (int, float)):
                failures.append(f"{metric} was not measured")
            elif "min" in bound and value < bound["min"]:
                failures.append(f"{metric} {value:.4f} < {bound['min']}")
            elif "max" in bound and value > bound["max"]:
                failures.append(f"{metric} {value:.4f} > {bound['max']}")
        if failures:
            return self.result(FAIL, "; ".join(failures) + ".", **read)
        return self.result(PASS, f"All {len(wanted)} thresholds for {target_stage} met.", **read)


def test_split_digest(dataset_version):
    """sha256 over the sorted row hashes of a dataset version's test split: two versions with
    equal digests were tested on the same rows."""
    hashes = sorted(Example.objects.filter(version=dataset_version, split=Example.TEST).values_list("row_sha256", flat=True))
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


class NoRegression(Gate):
    """Every thresholded "min" metric no more than the tolerance below the production version's,
    when both were tested on the same test split (equal digests of its row hashes)."""

    name, title = "no_regression", "No regression against production"

    def evaluate(self, version, target_stage):
        tolerance = _settings(version, target_stage).get("regression_tolerance")
        if tolerance is None:
            return self.result(NOT_APPLICABLE, f"No regression check is set for {target_stage}.")
        current = version.model.versions.filter(stage="production").exclude(pk=version.pk).select_related("run").first()
        if current is None:
            return self.result(NOT_APPLICABLE, "No version is in production to compare with.")
        mine, theirs = test_split_digest(version.run.dataset_version), test_split_digest(current.run.dataset_version)
        if mine != theirs:
            return self.result(NOT_APPLICABLE, f"Production v{current.number} was tested on another test split; "
                               "the two sets of metrics are not comparable.", test_split=mine, production_test_split=theirs)
        metrics = [m for m, b in (_settings(version, target_stage).get("metrics") or {}).items() if "min" in b] or ["accuracy"]
        read, drops = {"tolerance": tolerance, "production_version": current.number}, []
        for metric in sorted(metrics):
            new, old = version.metrics.get(metric), current.metrics.get(metric)
            if not isinstance(new, (int, float)) or not isinstance(old, (int, float)):
                continue
            read[metric] = {"candidate": new, "production": old, "delta": new - old}
            if new < old - tolerance:
                drops.append(f"{metric} {new:.4f} vs production {old:.4f} (drop {old - new:.4f} > {tolerance})")
        if drops:
            return self.result(FAIL, "; ".join(drops) + ".", **read)
        return self.result(PASS, f"No metric fell more than {tolerance} below production v{current.number}.", **read)


class DataClean(Gate):
    """The training data has no leakage across splits and its PII is redacted, absent or signed off."""

    name, title = "data", "Training data: leakage and PII"

    def evaluate(self, version, target_stage):
        data = DatasetVersion.objects.select_related("dataset").get(pk=version.run.dataset_version_id)
        problems = []
        if data.has_leakage:
            problems.append("rows or groups leak across splits")
        if data.pii_status == DatasetVersion.PiiStatus.FOUND and not data.pii_signed_off:
            problems.append("PII was found and is neither redacted nor signed off")
        numbers = {"dataset_version": data.pk, "has_leakage": data.has_leakage, "pii_status": data.pii_status,
                   "pii_signed_off": bool(data.pii_signed_off)}
        if problems:
            return self.result(FAIL, f"{data.dataset.slug} v{data.number}: " + "; ".join(problems) + ".", **numbers)
        return self.result(PASS, f"{data.dataset.slug} v{data.number}: no leakage; PII {data.pii_status}.", **numbers)


class LabelingQC(Gate):
    """QC passed for every labeling project the training data came from."""

    name, title = "labeling_qc", "Labeling QC"

    def evaluate(self, version, target_stage):
        projects = lineage.labeling_sources(version.lineage)
        if not projects:
            return self.result(NOT_APPLICABLE, "The training data did not come from a labeling project.")
        failed = [p for p in projects if not (p.get("qc") or {}).get("passes")]
        numbers = {"projects": [{"id": p["id"], "name": p["name"], "qc_passes": (p.get("qc") or {}).get("passes"),
                                 "override": p.get("qc_override")} for p in projects]}
        if failed:
            names = ", ".join(f"“{p['name']}”" for p in failed)
            return self.result(FAIL, f"QC did not pass for {names} (frozen under an override).", **numbers)
        return self.result(PASS, f"QC passed for {len(projects)} labeling project(s).", **numbers)


class SignatureValid(Gate):
    """The version's signature verifies now, over files read afresh from the store."""

    name, title = "signature", "Signature"

    def evaluate(self, version, target_stage):
        check = version.verify()
        numbers = {"bundle": version.signature_sha256, "recorded": version.signature_status}
        return self.result(PASS if check.ok else FAIL, check.message, **numbers)


class CardComplete(Gate):
    """The model card has every required section, none left as the placeholder."""

    name, title = "card", "Model card"

    def evaluate(self, version, target_stage):
        missing = cards.missing_sections(version.card)
        numbers = {"card_sha256": version.card_sha256, "missing": missing}
        if missing:
            return self.result(FAIL, "The card still needs: " + ", ".join(missing) + ".", **numbers)
        return self.result(PASS, "Every required section is written.", **numbers)


GATES = (MetricThresholds(), NoRegression(), DataClean(), LabelingQC(), SignatureValid(), CardComplete())
# Gates a higher app adds (monitoring's error-budget policy): the registry never imports them,
# they register themselves when their app loads.
_registered = []


def register(gate):
    """Evaluate `gate` after the built-in ones, from now on. A gate of the same name replaces
    the one registered before (a module imported twice registers once). Returns the gate."""
    if gate.name in {g.name for g in GATES}:
        raise ValueError(f"{gate.name!r} is the name of a built-in gate")
    _registered[:] = [g for g in _registered if g.name != gate.name] + [gate]
    return gate


def all_gates():
    return (*GATES, *_registered)


def evaluate_all(version, target_stage):
    """Each gate's result as a dict, the built-in ones first, then the registered ones in the
    order they registered. Archiving is never gated."""
    gates = all_gates()
    if str(target_stage) == "archived":
        return [GateResult(g.name, NOT_APPLICABLE, "Archiving a version is never gated.").as_dict() for g in gates]
    return [gate.evaluate(version, target_stage).as_dict() for gate in gates]

