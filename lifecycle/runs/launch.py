"""Starting a run, the same way from the form, the JSON API and `manage.py run_start`:
parse the config, check it against the data and the model, then create and queue it."""
from lifecycle.datasets.models import DatasetVersion
from lifecycle.runs import basemodels
from lifecycle.runs.config import ConfigError, RunConfig
from lifecycle.runs.models import Run
from lifecycle.runs.plan import DataSummary, check_plan


def data_summary(version):
    blocked = []
    if version.pii_status == DatasetVersion.PiiStatus.FOUND and not version.pii_signed_off:
        blocked.append(f"{version} holds personal data without an approver's sign-off: redact it or get a sign-off")
    if version.has_leakage:
        blocked.append(f"{version} leaks between its splits (see its leakage report): split it again first")
    if version.split_meets_fractions is False:
        blocked.append(f"{version}'s split cannot meet its fractions ({version.split_problem()}): "
                       "split it again with one of the ways out on its page")
    return DataSummary(task=version.dataset.task, counts=version.split_counts(), blocked=blocked)


def plan_for(config, *, device_memory_gb=None):
    """(plan, version) for a parsed config; raises ConfigError with every problem found."""
    version = DatasetVersion.objects.select_related("dataset").filter(pk=config.dataset_version).first()
    if version is None:
        raise ConfigError({"dataset_version": [f"there is no dataset version {config.dataset_version}"]})
    try:
        model = basemodels.get(config.base_model)
    except basemodels.ModelDirError as exc:
        raise ConfigError({"base_model": [str(exc)]}) from None
    return check_plan(config, data_summary(version), model, device_memory_gb=device_memory_gb), version


def start(user, data, *, name=""):
    """A queued Run from a config dict; raises ConfigError (nothing written) or QueueUnavailable."""
    config = data if isinstance(data, RunConfig) else RunConfig.parse(data)
    plan, version = plan_for(config)
    return Run.start(user, plan, name=name, dataset_version=version)
