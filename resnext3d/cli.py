"""The ``resnext3d`` command: Lightning's ``fit|validate|test|predict`` plus a few tools."""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import itertools
import logging
import os
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins import Precision
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from resnext3d.files import describe_os_error
from resnext3d.training import (
    CONFIG_FILE,
    AtomicCheckpointIO,
    CheckpointError,
    NonFiniteError,
    NonFiniteGuard,
    best_checkpoint,
    check_checkpoint_task,
    check_checkpoint_weights,
    prepare_resume,
    read_checkpoint,
    resume_files,
)
from resnext3d.training.checkpoints import LAST_CHECKPOINT
from resnext3d.training.performance import (
    accelerator_device_type,
    default_precision,
    precision_plugin,
)
from resnext3d.training.run_lock import RunLock

if TYPE_CHECKING:
    from resnext3d.deploy import EngineRequest
    from resnext3d.models import ProbabilityEnsemble

# The tools (models, phantom, check-data, evaluate, study, cv) and the data, models and tasks are
# imported by the commands that use them: `resnext3d --help` or a tool needs neither MONAI nor
# the others' imports.

# Set by the launching process so that the DDP workers it starts, which re-run this command,
# write into its run directory.
RUN_VERSION_VARIABLE = "RESNEXT3D_RUN_VERSION"
_RUN_NUMBERS = itertools.count()
DEFAULTS = Path(__file__).parent / "configs" / "defaults.yaml"
LIGHTNING_MODEL_CHECKPOINTS = {
    f"{package}.callbacks{module}.ModelCheckpoint"
    for package in ("lightning.pytorch", "pytorch_lightning")
    for module in ("", ".model_checkpoint")
}


class ResNeXtCLI(LightningCLI):
    """Lightning's CLI with the data-to-model links and one directory per run.

    Every run starts from ``resnext3d/configs/defaults.yaml`` (loggers, checkpoints), then its
    --config files. A run's config, checkpoints, metrics CSV, TensorBoard events, split and
    predictions all land in ``<save_dir>/<experiment>/<version>``, the experiment being the first
    config file's name and the version the start time, or in ``--run_dir`` where a config or the
    command line sets it (a sweep's runs); a resumed run (`resume_dir`) continues in
    its own directory, and one that evaluates another (`source_run`) goes beside it. Checkpoint
    callbacks without a monitor keep the task's metric. A run that leaves ``trainer.precision``
    unset gets the fastest measured for its device
    (:func:`resnext3d.training.performance.default_precision`), and one in bf16-mixed on a CPU
    trains with :class:`~resnext3d.training.performance.CpuBf16MixedPrecision`. Every run has a
    :class:`~resnext3d.training.NonFiniteGuard` (configured under ``nonfinite``) and writes its
    checkpoints atomically (:class:`~resnext3d.training.AtomicCheckpointIO`); a checkpoint given
    with ``--ckpt_path`` is checked against the run's model before anything starts, as is
    each checkpoint of an `ensemble`, which then takes the place of the task's network.
    """

    def __init__(
        self,
        *args,
        resume_dir: Path | None = None,
        source_run: Path | None = None,
        ensemble: list[Path] | None = None,
        owner: contextlib.ExitStack | None = None,
        engine: EngineRequest | None = None,
        **kwargs,
    ) -> None:
        self.resume_dir = resume_dir  # continue in this run directory
        self.source_run = source_run  # the run whose config and checkpoint this one uses
        self.ensemble = ensemble or []  # checkpoints whose networks' mean this run evaluates
        # In the process that owns the run: what it holds until the run ends (the lock).
        self.owner = owner
        self.engine = engine  # runs an exported network in place of the task's (predict)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # A link whose target the chosen task's network lacks (a classifier's num_classes for a
        # segmentation network's out_channels, and the reverse) is skipped.
        for source, target in (
            ("data.in_channels", "model.init_args.network.init_args.in_channels"),
            ("data.num_classes", "model.init_args.network.init_args.num_classes"),
            ("data.num_classes", "model.init_args.network.init_args.out_channels"),
            ("data.class_names", "model.init_args.class_names"),
            # A multi-task run's grade classes, beside its regions (class_names).
            ("data.num_grades", "model.init_args.network.init_args.num_grades"),
            ("data.grade_names", "model.init_args.grade_names"),
            # A planned network's request (PlannedResNeXtUNet) is planned for the crops it trains
            # on; the run's config then records the plan (_record_plan).
            ("data.roi_size", "model.init_args.network.init_args.patch_size"),
            ("data.spacing", "model.init_args.network.init_args.spacing"),
        ):
            parser.link_arguments(source, target, apply_on="instantiate")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="the run's directory, where every logger writes and its checkpoints go "
            "(default: <save_dir>/<experiment>/<start time>, from the first logger)",
        )
        parser.add_argument(
            "--monitor",
            type=str | None,
            default=None,
            help="the metric checkpoints keep the best of, e.g. val/lesion_dice_mean (default: "
            "the task's); minimised for losses and distances (hd95), maximised otherwise",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        # Before Lightning merges the checkpoint's hyperparameters into the config, where a
        # checkpoint of another task fails as an unreadable type error.
        path = self._ckpt_path()
        if path is not None:
            self._checkpoint = read_checkpoint(path)
            check_checkpoint_task(
                path, self._checkpoint, self._subcommand_config().model.class_path
            )

    def after_instantiate_classes(self) -> None:
        self._record_plan()
        path = self._ckpt_path()
        if path is not None:
            check_checkpoint_weights(path, self._checkpoint, self.model)
        if self.ensemble:
            self.model.network = self._ensemble_network()
        if self.engine is not None and self.engine.replaces_network:
            self.model.network = self._engine_network()

    def _record_plan(self) -> None:
        """A planned network's request replaced in the config by the plan it built
        (:func:`resnext3d.models.plan_unet`), before the run saves its config.yaml: that then
        names the network itself, which a run evaluated or resumed with another roi_size, or
        a change of the presets, rebuilds as it was. (The config of a run saved before plans
        were written names the request, planned for the roi_size it is given, as it always
        was.)"""
        # PlannedResNeXtUNet and PlannedGradingResNeXtUNet keep the plan they were built from.
        plan = getattr(getattr(self.model, "network", None), "plan", None)
        if plan is None:
            return
        config = self._subcommand_config()
        model = {
            "class_path": config.model.class_path,
            "init_args": {"network": plan},
        }
        subcommand = self.config.get("subcommand")
        # Parsed as if the config had named the plan: checked, and with the defaults that the
        # config.yaml of any other network shows.
        parsed = self.parser.parse_object(
            {subcommand: {"model": model}} if subcommand else {"model": model}, self.config
        )
        # In place: the trainer's SaveConfigCallback holds this config.
        config.model.init_args.network = parsed.get(subcommand, parsed).model.init_args.network

    def _ensemble_network(self) -> ProbabilityEnsemble:
        """The networks of the `ensemble`'s checkpoints, each checked against the model, which
        the first run's config built."""
        from resnext3d.models import ProbabilityEnsemble
        from resnext3d.tasks import VolumeSegmenter

        task = self._subcommand_config().model.class_path
        members = []
        for path in self.ensemble:
            checkpoint = read_checkpoint(path)
            try:
                check_checkpoint_task(path, checkpoint, task)
                check_checkpoint_weights(path, checkpoint, self.model)
            except CheckpointError as error:
                raise CheckpointError(
                    f"{error} (an ensemble's runs share the model of its first, {self.source_run})"
                ) from error
            member = copy.deepcopy(self.model.network)
            prefix = "network."
            member.load_state_dict(
                {
                    name.removeprefix(prefix): weights
                    for name, weights in checkpoint["state_dict"].items()
                    if name.startswith(prefix)
                }
            )
            members.append(member)
        probabilities = "sigmoid" if isinstance(self.model, VolumeSegmenter) else "softmax"
        return ProbabilityEnsemble(members, probabilities)

    def _engine_network(self) -> torch.nn.Module:
        """The exported network of the run, on the engine asked for, checked against the
        windows the run feeds."""
        from resnext3d.deploy import engine_network

        window = getattr(self.model, "sliding_window_size", None) or self.datamodule.roi_size
        task = self._subcommand_config().model.class_path
        return engine_network(
            self.engine, self.source_run, task, self.datamodule.in_channels, window
        )

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        trainer = self._get(self.config_init, "trainer", default={})
        plugins = trainer.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins = [*plugins, AtomicCheckpointIO()]
        # The config keeps the precision's name, so that a run resumed or evaluated on another
        # device gets that device's plugin.
        device_type = accelerator_device_type(trainer.get("accelerator"))
        precision = precision_plugin(trainer.get("precision"), device_type)
        if precision is not None and not any(isinstance(plugin, Precision) for plugin in plugins):
            plugins, kwargs["precision"] = [*plugins, precision], None
        kwargs["plugins"] = plugins
        return super().instantiate_trainer(**kwargs)

    def _subcommand_config(self):
        # Called from parse_arguments too, before LightningCLI sets self.subcommand.
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    def _ckpt_path(self) -> str | None:
        return self._subcommand_config().get("ckpt_path")

    def before_instantiate_classes(self) -> None:
        config = self._subcommand_config()
        version = _run_version()
        if self.source_run is not None:  # the run evaluated is not this run's directory
            config.run_dir = None
        run_dir = self.resume_dir or (Path(config.run_dir).resolve() if config.run_dir else None)
        loggers = config.trainer.logger
        loggers = loggers if isinstance(loggers, list) else [loggers]
        loggers = [lg for lg in loggers if hasattr(lg, "init_args")]
        for logger in loggers:
            if run_dir is not None and not _writes_files(logger):
                # wandb's id: the saved config's when the run resumes, else a new version (the
                # run directory's name need not be unique in a wandb project); its name, group
                # and tags are a sweep's to set (WANDB_NAME, WANDB_RUN_GROUP, WANDB_TAGS).
                logger.init_args.version = logger.init_args.version or version
                continue
            if run_dir is not None:  # the run's own directory, a resumed run's included
                logger.init_args.save_dir = str(run_dir.parent.parent)
                logger.init_args.name = run_dir.parent.name
                logger.init_args.version = run_dir.name
                continue
            if self.source_run is not None:  # a new run beside the one it evaluates
                logger.init_args.save_dir = str(self.source_run.parent.parent)
                logger.init_args.name = self.source_run.parent.name
                logger.init_args.version = version
            if getattr(logger.init_args, "version", None) is None:
                logger.init_args.version = version
            if getattr(logger.init_args, "name", None) in (None, "lightning_logs"):
                logger.init_args.name = self._experiment_name()
            # Absolute: the checkpoints' directory is recorded in them, and a resumed run keeps
            # its best and top-k scores only if its directory is the same string.
            if getattr(logger.init_args, "save_dir", None):
                logger.init_args.save_dir = str(Path(logger.init_args.save_dir).resolve())
        if config.trainer.precision is None:
            device_type = accelerator_device_type(config.trainer.accelerator)
            if device_type is not None:
                config.trainer.precision = default_precision(device_type)
        if run_dir is not None:
            config.trainer.default_root_dir = str(run_dir)
        elif config.trainer.default_root_dir is None or self.source_run is not None:
            first = next((lg.init_args for lg in loggers if _writes_files(lg)), None)
            base = Path(first.save_dir) / first.name if first else Path("runs")
            config.trainer.default_root_dir = str(base / str(first.version if first else version))
        for logger in loggers:
            if logger.class_path.endswith("WandbLogger"):
                # Its files beside the run's other logs, the run's version as its id.
                logger.init_args.save_dir = config.trainer.default_root_dir
                _keep_wandb_offline_without_key(logger)
        self._configure_checkpoints(config)
        if self._ckpt_path() or self.ensemble:
            # The checkpoints' weights replace the pretrained ones the network was first built
            # from, whose file need not be where it was when the run began.
            _forget_pretrained_weights(config.model)
        if self.owner is not None and self.resume_dir is None:
            self._own_new_run_directory(Path(config.trainer.default_root_dir))

    def _own_new_run_directory(self, run_dir: Path) -> None:
        """Lock a new fit's directory for the run (which proves it can be written, before
        anything starts), and remove a directory this run made if it fails before it wrote
        anything worth keeping."""
        if not run_dir.exists():
            self.owner.push(
                lambda failure, *_: failure is not None and self._remove_if_unused(run_dir)
            )
        if self.config.subcommand == "fit":
            self.owner.enter_context(RunLock(run_dir))

    def _remove_if_unused(self, run_dir: Path) -> bool:
        trainer = getattr(self, "trainer", None)
        trained = trainer is not None and trainer.state.fn == "fit" and trainer.global_step > 0
        results = [*run_dir.glob("checkpoints/*.ckpt"), *run_dir.glob("predictions*")]
        if not trained and not results:
            shutil.rmtree(run_dir, ignore_errors=True)
        return False  # the failure goes on to be reported

    def _experiment_name(self) -> str:
        """The name of the first --config file (runs/<name>/...), or "run" without one."""
        files = [Path(str(path)) for path in self._subcommand_config().get("config") or []]
        return files[0].stem if files else "run"

    @staticmethod
    def _configure_checkpoints(config) -> None:
        """Checkpoint callbacks are the project's ModelCheckpoint, whose last.ckpt is always the
        latest state, even where a config names Lightning's; without a monitor they keep the
        best of ``--monitor``, or else of the task's own metric."""
        monitor = _imported(config.model.class_path).checkpoint_monitor
        if config.get("monitor"):
            lower_is_better = any(kind in config.monitor for kind in ("loss", "hd95"))
            monitor = (config.monitor, "min" if lower_is_better else "max")
        for callback in config.trainer.callbacks or []:
            if callback.class_path in LIGHTNING_MODEL_CHECKPOINTS:
                callback.class_path = "resnext3d.training.ModelCheckpoint"
            arguments = getattr(callback, "init_args", None)
            if callback.class_path.endswith("ModelCheckpoint") and arguments.monitor is None:
                arguments.monitor, arguments.mode = monitor


class _ConfigOnlyCLI(ResNeXtCLI):
    """Parses a fit's configs and builds its model and data module as ``resnext3d fit`` does (the
    defaults, the links from the data to the network), without a run: no directory, no trainer."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        self.config_init = self.parser.instantiate(self.config)
        self.model, self.datamodule = self.config_init.model, self.config_init.data


def build_model_and_data(args: list[str]) -> tuple[L.LightningModule, L.LightningDataModule]:
    """The LightningModule and data module that ``resnext3d fit ARGS`` would train, e.g. to count
    a sweep's networks (build them under ``torch.device("meta")`` to allocate nothing)."""
    # Quietly: what a run says as it starts (its seed, the phantom's banner) is the run's to say.
    with warnings.catch_warnings(), _logging_disabled():
        warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter")
        cli = _ConfigOnlyCLI(
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            run=False,
            auto_configure_optimizers=False,
            parser_kwargs={"default_config_files": [str(DEFAULTS)]},
        )
    return cli.model, cli.datamodule


def _forget_pretrained_weights(node) -> None:
    """Every ``checkpoint_path`` among a config node's class arguments set to None."""
    if isinstance(node, list):
        for item in node:
            _forget_pretrained_weights(item)
        return
    arguments = getattr(node, "init_args", None)
    if arguments is None:
        return
    if getattr(arguments, "checkpoint_path", None) is not None:
        arguments.checkpoint_path = None
    for value in vars(arguments).values():
        _forget_pretrained_weights(value)


def _show_weight_reports() -> None:
    """What pretrained weights loaded, adapted and left at initialisation, which
    :func:`resnext3d.load_pretrained` logs, on the console as Lightning's own messages are."""
    logger = logging.getLogger("resnext3d.models.weights")
    if not logger.handlers and _is_first_rank():
        logger.setLevel(logging.INFO)
        logger.addHandler(logging.StreamHandler())


@contextlib.contextmanager
def _logging_disabled():
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _imported(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _writes_files(logger) -> bool:
    return not logger.class_path.endswith("WandbLogger")


def _run_version() -> str:
    """One version per run, the same in every process of a distributed run.

    Processes that Lightning's DDP launcher starts inherit the launching process's version, as do
    those of a user who sets RESNEXT3D_RUN_VERSION; the tasks of a SLURM job share its id (a
    requeued job continues in its directory), those of a torchrun its run id. Otherwise it is the
    start time and process id, numbered from the second run of a process on: two runs of one
    process can start within the same second.
    """
    inherited = os.environ.get(RUN_VERSION_VARIABLE)
    if inherited:
        return inherited
    if "SLURM_JOB_ID" in os.environ:
        version = f"slurm-{os.environ['SLURM_JOB_ID']}"
    elif "TORCHELASTIC_RUN_ID" in os.environ:
        version = f"torchrun-{os.environ['TORCHELASTIC_RUN_ID']}"
    else:
        run_number = next(_RUN_NUMBERS)
        version = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        version += f"-{run_number}" if run_number else ""
    os.environ[RUN_VERSION_VARIABLE] = version
    return version


def _is_first_rank() -> bool:
    """Whether this is the first process of a run that a scheduler or torchrun started as several
    (each launching); a process that Lightning's launcher starts is no launching one."""
    return all(os.environ.get(variable, "0") == "0" for variable in ("SLURM_PROCID", "RANK"))


def _is_requeued_slurm_job() -> bool:
    return int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0


def _keep_wandb_offline_without_key(logger) -> None:
    """wandb prompts for a key when it has none; a training job must never wait on that."""
    has_key = bool(os.environ.get("WANDB_API_KEY")) or "api.wandb.ai" in _netrc()
    if not has_key and os.environ.get("WANDB_MODE") != "disabled":
        logger.init_args.offline = True
        os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")


def _netrc() -> str:
    path = Path.home() / ".netrc"
    return path.read_text() if path.is_file() else ""


def lightning_main(argv: list[str] | None) -> None:
    """Lightning's subcommands; ``argv`` None reads the command line."""
    # Lightning 2.6 under torch 2.13 warns on every fit about torch internals it calls, and its
    # CLI about jsonargparse APIs it uses: neither is the user's to act on.
    warnings.filterwarnings(
        "ignore", category=FutureWarning, module=r"(lightning|pytorch_lightning)"
    )
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    # Every run has a new directory, which the loggers share: one finding the other's files there
    # is expected, not a previous run about to be overwritten.
    warnings.filterwarnings(
        "ignore", message=r"Experiment logs directory .* exists and is not empty"
    )
    # Lightning says, whenever a data module is used, that the task's batch hook (the memory
    # format) is the one that runs: it is, by design.
    warnings.filterwarnings(
        "ignore", message=r"You have overridden `on_after_batch_transfer` in `LightningModule`"
    )
    _show_weight_reports()
    launching = RUN_VERSION_VARIABLE not in os.environ
    args = list(sys.argv[1:] if argv is None else argv)
    from resnext3d.deploy.engines import take_engine_options

    engine, args = take_engine_options(args)
    try:
        # What the run holds until it ends, however it ends: the lock on its directory.
        with contextlib.ExitStack() as run_resources:
            owner = run_resources if launching and _is_first_rank() else None
            args, run_dir, ensemble = _run_arguments(args, owner=owner)
            if engine is not None:
                args = engine.lightning_arguments(args, ensemble)
            resume_dir = run_dir if args[0] == "fit" else None
            if resume_dir is not None:
                os.environ[RUN_VERSION_VARIABLE] = resume_dir.name  # DDP workers resume there
            ResNeXtCLI(
                subclass_mode_model=True,
                subclass_mode_data=True,
                args=args,
                auto_configure_optimizers=False,
                # A resumed run, or a requeued SLURM job, continues in its own directory, where
                # its config already is (the resumed one keeps the earlier config beside it).
                save_config_kwargs={
                    "overwrite": resume_dir is not None or _is_requeued_slurm_job()
                },
                # The loggers and callbacks every run starts from, before its --config files.
                parser_kwargs={
                    command: {"default_config_files": [str(DEFAULTS)]}
                    for command in LIGHTNING_COMMANDS
                },
                resume_dir=resume_dir,
                source_run=run_dir,
                ensemble=ensemble,
                owner=owner,
                engine=engine,
            )
    finally:
        if launching:  # the next run of this process, or a process it starts, is another run
            os.environ.pop(RUN_VERSION_VARIABLE, None)


def _run_arguments(
    args: list[str], owner: contextlib.ExitStack | None
) -> tuple[list[str], Path | None, list[Path]]:
    """Run directories in place of a config and a checkpoint:

    - ``fit --resume RUN_DIR [overrides]``: ``fit --config RUN_DIR/config.yaml --ckpt_path
      RUN_DIR/checkpoints/last.ckpt``, continuing in RUN_DIR; the process that owns the run (the
      one that launches it, not each DDP worker) locks RUN_DIR into `owner` and readies it;
    - ``validate|test|predict --run RUN_DIR [overrides]``: the run's config and best checkpoint
      (its last where it kept no best), in a new run directory beside it;
    - ``validate|test|predict --run RUN_DIR RUN_DIR ... [overrides]``, or a folder of runs (e.g.
      a cross-validation's folds): the ensemble of the runs' best checkpoints, with the first
      run's config, in a new run directory beside the first run.

    Returns the arguments, the (first) run directory given, if any, and the checkpoints of an
    ensemble of several runs, which the CLI loads into the model itself.
    """
    command = args[0]
    option = "--resume" if command == "fit" else "--run"
    given, rest = _take_option(args, option)
    if not given:
        return args, None, []
    if "--config" in rest or "--ckpt_path" in rest:
        raise CheckpointError(
            f"{option} RUN_DIR takes the run's own config and checkpoint: give overrides only "
            f"(resnext3d {command} {option} RUN_DIR [--data.data_dir DIR ...])"
        )
    if command == "fit":
        if len(given) > 1:
            raise CheckpointError(f"--resume continues one run, not {len(given)}")
        run_dir = Path(given[0]).resolve()
        if owner is not None:
            resume_files(run_dir)  # a run that cannot be resumed is named before it is locked
            owner.enter_context(RunLock(run_dir))
        config, checkpoint = prepare_resume(run_dir) if owner else resume_files(run_dir)
        run_args = [command, "--config", str(config), "--ckpt_path", str(checkpoint)]
        return [*run_args, *rest[1:]], run_dir, []
    runs = [run for path in given for run in _runs_in(Path(path).resolve())]
    config, checkpoints = runs[0] / CONFIG_FILE, [best_checkpoint(run) for run in runs]
    if len(runs) == 1:  # as without ensembles: Lightning loads the checkpoint
        run_args = [command, "--config", str(config), "--ckpt_path", str(checkpoints[0])]
        return [*run_args, *rest[1:]], runs[0], []
    return [command, "--config", str(config), *rest[1:]], runs[0], checkpoints


def _runs_in(path: Path) -> list[Path]:
    """`path` if it is a run directory (it has a config), else its sub-folders that hold a
    trained run (a config and a last checkpoint), e.g. a cross-validation's folds: the runs
    that earlier ensembles wrote their predictions into beside them are no members."""
    if (path / CONFIG_FILE).is_file() or not path.is_dir():
        return [path]  # one that cannot be used is named by best_checkpoint
    runs = sorted(
        sub
        for sub in path.iterdir()
        if (sub / CONFIG_FILE).is_file() and (sub / LAST_CHECKPOINT).is_file()
    )
    if not runs:
        raise CheckpointError(
            f"{path}: not a run directory (no {CONFIG_FILE}), nor a folder of trained runs (no "
            f"sub-folder has a {CONFIG_FILE} and a {LAST_CHECKPOINT})"
        )
    return runs


def _take_option(args: list[str], option: str) -> tuple[list[str], list[str]]:
    """The values of `option` (``--option VALUE [VALUE ...]``, up to the next ``--`` argument, or
    ``--option=VALUE``) and the other args."""
    for index, arg in enumerate(args):
        if arg == option:
            values = list(itertools.takewhile(lambda a: not a.startswith("--"), args[index + 1 :]))
            if not values:
                raise CheckpointError(f"{option} needs a run directory")
            return values, args[:index] + args[index + 1 + len(values) :]
        if arg.startswith(f"{option}="):
            return [arg.partition("=")[2]], args[:index] + args[index + 1 :]
    return [], args


def models_command(argv: list[str]) -> None:
    from resnext3d.models import (
        UNET_PRESETS,
        PlannedResNeXtUNet,
        count_macs,
        count_parameters,
        create_model,
        list_models,
    )

    parser = argparse.ArgumentParser(
        prog="resnext3d models", description="Every preset with its parameters and GMACs."
    )
    parser.add_argument("--spatial-dims", type=int, default=3, choices=(2, 3))
    parser.add_argument("--in-channels", type=int, default=4)
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument(
        "--input-size", type=int, nargs="+", default=[128], help="one size or one per axis"
    )
    parser.add_argument(
        "--spacing", type=float, nargs="+", default=[1.0], help="mm, for the planned UNets"
    )
    args = parser.parse_args(argv)

    def per_axis(option: str, values: list) -> list:
        if len(values) not in (1, args.spatial_dims):
            parser.error(f"--{option} needs 1 or {args.spatial_dims} values, got {len(values)}")
        return values * args.spatial_dims if len(values) == 1 else values

    size, spacing = per_axis("input-size", args.input_size), per_axis("spacing", args.spacing)
    shape = (1, args.in_channels, *size)
    print(f"{args.spatial_dims}D, input {'x'.join(map(str, shape))}, {args.num_classes} classes")
    print(f"{'model':<20} {'layers':<14} {'C':>3} {'d':>3} {'params (M)':>11} {'GMACs':>9}")
    for name in list_models():
        # On the meta device a 150-layer 3D network is built and run without memory or time.
        with torch.device("meta"):
            model = create_model(
                name,
                spatial_dims=args.spatial_dims,
                in_channels=args.in_channels,
                num_classes=args.num_classes,
            )
            macs = count_macs(model, shape)
        layers = "-".join(map(str, model.layers))
        print(
            f"{name:<20} {layers:<14} {model.cardinality:>3} {model.base_width:>3} "
            f"{count_parameters(model) / 1e6:>11.2f} {macs / 1e9:>9.2f}"
        )
    print(f"\nSegmentation UNets planned for a {'x'.join(map(str, size))} patch at "
          f"{'x'.join(map(str, spacing))} mm (PlannedResNeXtUNet)")  # fmt: skip
    print(f"{'preset':<22} {'layers':<14} {'C':>3} {'strides':<28} {'params (M)':>11} {'GMACs':>9}")
    for name in UNET_PRESETS:
        with torch.device("meta"):
            unet = PlannedResNeXtUNet(name, size, spacing, in_channels=args.in_channels)
            macs = count_macs(unet, shape)
        layers = "-".join(map(str, unet.encoder.layers))
        strides = " ".join(str(r) for r in unet.encoder.feature_info.reduction())
        print(
            f"{name:<22} {layers:<14} {unet.encoder.cardinality:>3} {strides:<28} "
            f"{count_parameters(unet) / 1e6:>11.2f} {macs / 1e9:>9.2f}"
        )


def complexity_command(argv: list[str]) -> None:
    from resnext3d.models.complexity import complexity_table

    argparse.ArgumentParser(
        prog="resnext3d complexity",
        description="The paper's Table 2 (conv2 block, 256-d in and out) in 2D and 3D.",
    ).parse_args(argv)
    for spatial_dims in (2, 3):
        rows = complexity_table(spatial_dims)
        kernel = "×".join(["3"] * spatial_dims)
        print(
            f"\n{spatial_dims}D, {kernel} kernels: ResNet block (C=1, d=64) "
            f"= {rows[0]['reference']:,} parameters"
        )
        print(
            f"{'C':>3} {'d':>4} {'parameters':>11}   {'equal-complexity d':>18} {'parameters':>11}"
        )
        for row in rows:
            print(
                f"{row['cardinality']:>3} {row['width']:>4} {row['parameters']:>11,}   "
                f"{row['equal_width']:>18} {row['equal_parameters']:>11,}"
            )


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def phantom_command(argv: list[str]) -> None:
    from resnext3d.data.phantom import phantom_main

    sys.exit(phantom_main(argv))


def check_data_command(argv: list[str]) -> None:
    from resnext3d.data.checks import check_data_main

    sys.exit(check_data_main(argv))


def study_command(argv: list[str]) -> None:
    from resnext3d.study import study_main

    sys.exit(study_main(argv))


def cv_command(argv: list[str]) -> None:
    from resnext3d.crossval import cv_main

    sys.exit(cv_main(argv))


def export_command(argv: list[str]) -> None:
    from resnext3d.deploy.export import export_main

    sys.exit(export_main(argv))


def export_weights_command(argv: list[str]) -> None:
    from resnext3d.models.hub import export_weights_main

    sys.exit(export_weights_main(argv))


def evaluate_command(argv: list[str]) -> None:
    from resnext3d.evaluation.evaluate import evaluate_main

    sys.exit(evaluate_main(argv))


TOOLS = {
    "models": models_command,
    "complexity": complexity_command,
    "phantom": phantom_command,
    "check-data": check_data_command,
    "study": study_command,
    "cv": cv_command,
    "evaluate": evaluate_command,
    "export-weights": export_weights_command,
    "export": export_command,
}
USAGE = """usage: resnext3d COMMAND [options]

training (Lightning CLI; `resnext3d fit --help` for every option):
  fit, validate, test, predict   e.g. resnext3d fit --config experiments/brats_cls.yaml
  fit --resume RUN_DIR            continue a run in its own directory from its last.ckpt
  validate|test|predict --run RUN_DIR   the run's config and best checkpoint
  validate|test|predict --run RUN_DIR RUN_DIR ...   the ensemble of the runs' best checkpoints
                                  (mean probabilities); a folder of runs (e.g. the folds) too
  predict --run RUN_DIR --engine onnxruntime|openvino|torch-export [--exported FILE]
                                  the run's exported network (resnext3d export) on that engine
tools:
  models       every preset with parameters and GMACs at an input size
  complexity   the paper's Table 2 for a conv2 block, in 2D and 3D
  phantom      write a synthetic BraTS-format dataset: resnext3d phantom OUT --cases N --seed S
               [--difficulty standard|hard]
  check-data   read every file of a dataset and list every problem:
               resnext3d check-data DIR [--task classification|segmentation] [--labels CSV ...]
  study        cardinality at equal complexity, one fit per variant and seed, with results:
               resnext3d study experiments/studies/cpu_phantom.yaml [--print-commands]
  cv           k-fold cross-validation, one fit per fold, with each fold's best scores:
               resnext3d cv --config experiments/brats_seg.yaml --folds 5 [overrides]
               [--out DIR] [--print-commands] [--slurm] [--task N]
  evaluate     score predicted label maps as the BraTS challenge does (legacy and lesion-wise
               Dice and HD95 per region): resnext3d evaluate PREDICTIONS REFERENCES
               [--release auto|brats2021|brats2023|decathlon] [--out CSV] [--allow-missing]
  export-weights a run's network, or its encoder, as a weights folder (model.safetensors,
               config.json) that resnext3d.from_pretrained loads without the run:
               resnext3d export-weights --run RUN_DIR --out FOLDER [--part network|encoder]
  export       a run's network for CPU inference outside PyTorch (predict --engine):
               resnext3d export --run RUN_DIR [--format onnx|torch-export] [--out FILE]
               [--checkpoint best|last|FILE]
"""


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    if args[0] in TOOLS:
        TOOLS[args[0]](args[1:])
        return
    if args[0] in LIGHTNING_COMMANDS:
        from resnext3d.data.errors import DataError

        try:
            lightning_main(argv)
        except (DataError, CheckpointError, NonFiniteError) as error:
            # The message names the file or the step; a traceback would bury it.
            print(f"resnext3d {args[0]}: error: {error}", file=sys.stderr)
            sys.exit(1)
        except OSError as error:
            if error.filename is None:
                raise
            # A full disk, a read-only or unwritable folder: the file and the reason suffice.
            reason = describe_os_error(error, error.filename)
            print(f"resnext3d {args[0]}: error: {error.filename}: {reason}", file=sys.stderr)
            sys.exit(1)
        except SIGTERMException:
            # Lightning ends a run stopped by SIGTERM as if it had finished (status 0); the
            # shell's convention, 128 + the signal's number, tells a scheduler or a sweep it
            # did not.
            sys.exit(128 + signal.SIGTERM)
        return
    print(f"resnext3d: unknown command {args[0]!r}\n\n{USAGE}", file=sys.stderr)
    sys.exit(2)
