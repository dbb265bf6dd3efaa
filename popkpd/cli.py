"""Command line: ``popkpd demo | fit CONFIG | report FIT_DIR | simulate TRIAL | dose QUERY``.

Thin commands over the public API. CPU chains: the command line asks XLA for as many host
devices as chains (``--xla_force_host_platform_device_count``) before JAX starts, so that chains
can run in parallel on a multi-core CPU; the library itself never changes that setting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _host_devices(n: int) -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def _fit_from_config(config_path, overrides: dict, out_dir=None, report: bool = True, resume: bool = False):
    import popkpd
    from popkpd._configfile import load_config

    cfg = load_config(config_path)
    options = {**cfg.fit_options, **{k: v for k, v in overrides.items() if v is not None}}
    out = Path(out_dir) if out_dir else cfg.output_dir
    print(f"popkpd fit: {cfg.name}: {cfg.dataset.n_subjects} subjects, {cfg.dataset.n_observations} observations"
          + (f" ({cfg.rows_removed} rows removed by the data query)" if cfg.rows_removed else ""), flush=True)
    print(f"  model {type(cfg.population.structural).__name__}, prediction {cfg.population.method}; "
          f"sampler {options}", flush=True)

    saved = []  # the fit the last checkpoint saved

    def save(result):
        saved[:] = [result]
        result.metadata["config"] = cfg.text
        result.metadata["config_path"] = str(cfg.path)
        result.metadata["rows_removed_by_query"] = cfg.rows_removed
        result.tree.attrs["popkpd"] = json.dumps(result.metadata)
        return result.save(out / "fit.nc")

    if options.get("checkpoint_every"):
        options["on_checkpoint"] = save
    t = time.perf_counter()
    result = _continue(cfg, options, out) if resume else popkpd.fit(cfg.population, cfg.dataset, **options)
    path = out / "fit.nc" if saved and saved[0] is result else save(result)  # once: the last checkpoint's
    print(f"  done in {time.perf_counter() - t:.1f} s; saved {path}", flush=True)
    print(result.convergence(), flush=True)
    if report:
        files = popkpd.write_report(result, cfg.population, cfg.dataset, out)
        print(f"  report: {len(files)} files in {out} (summary.md first)", flush=True)
    return result, cfg, out


def _continue(cfg, options: dict, out: Path):
    """``popkpd fit --continue``: the fit saved in ``out`` by this config, run on to ``draws`` per chain."""
    import tomllib

    import popkpd

    path = out / "fit.nc"
    if not path.is_file():
        raise SystemExit(f"popkpd fit --continue: no saved fit {path}; expected the output folder of an earlier "
                         "`popkpd fit` of this config (run without --continue to start one).")
    previous = popkpd.load_fit(path)

    def settings(text):  # the config but for the settings a continuation may change
        config = tomllib.loads(text)
        for key in ("draws", "checkpoint_every", "devices"):
            config.get("fit", {}).pop(key, None)
        return config

    if "config" not in previous.metadata or settings(previous.metadata["config"]) != settings(cfg.text):
        raise SystemExit(f"popkpd fit --continue: {path} was made with another config (or not by `popkpd fit`); "
                         f"expected {cfg.path} as it was, but for [fit] draws or checkpoint_every.")
    done, target = int(previous.metadata["sampler"]["draws"]), int(options.get("draws", 1000))
    if target <= done:
        raise SystemExit(f"popkpd fit --continue: {path} has {done} draws per chain, [fit] draws (or --draws) asks "
                         f"for {target}; expected more than {done} (the total per chain to reach).")
    print(f"  continuing {path}: {done} draws per chain, {target - done} more", flush=True)
    return popkpd.continue_fit(previous, cfg.population, cfg.dataset, draws=target - done,
                               devices=options.get("devices"), checkpoint_every=options.get("checkpoint_every", 0),
                               on_checkpoint=options.get("on_checkpoint"))


def cmd_fit(args) -> int:
    overrides = dict(chains=args.chains, warmup=args.warmup, draws=args.draws, seed=args.seed, method=args.method)
    if args.devices is not None:
        from popkpd._configfile import devices

        spec = int(args.devices) if args.devices.isdigit() else args.devices
        overrides["devices"] = devices(spec, "popkpd fit --devices")
    if args.resume and any(overrides[k] is not None for k in ("chains", "warmup", "seed", "method")):
        raise SystemExit("popkpd fit --continue: --chains, --warmup, --seed and --method are the saved fit's; "
                         "expected only --draws (the total per chain to reach), --devices, --out and --no-report.")
    _fit_from_config(args.config, overrides, args.out, report=not args.no_report, resume=args.resume)
    return 0


def cmd_report(args) -> int:
    import popkpd
    from popkpd._configfile import load_config

    fit_dir = Path(args.fit_dir)
    fit_file = fit_dir / "fit.nc" if fit_dir.is_dir() else fit_dir
    result = popkpd.load_fit(fit_file)
    config_path = result.metadata.get("config_path")
    if not config_path or not Path(config_path).exists():
        raise SystemExit(f"popkpd report: the fit {fit_file} does not name an existing config file "
                         f"(metadata config_path={config_path!r}); it was not made by `popkpd fit`. "
                         "Use popkpd.write_report(fit, population, dataset, outdir) from Python.")
    cfg = load_config(config_path)
    files = popkpd.write_report(result, cfg.population, cfg.dataset, fit_file.parent)
    print(f"report: {len(files)} files in {fit_file.parent}")
    return 0


def cmd_demo(args) -> int:
    from popkpd._demo import run_demo

    run_demo(Path(args.out), quick=args.quick)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="popkpd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the full story: simulate a virtual trial, fit it, answer a dosing query "
                       "(writes CSVs, a fit, its report and PNGs; about 3-5 minutes on 2 CPU cores)")
    p.add_argument("--out", default="demo_output", help="output folder (default demo_output/)")
    p.add_argument("--quick", action="store_true", help="fewer patients, draws and regimens, for a smoke run")
    p.set_defaults(func=cmd_demo, chains=4)

    p = sub.add_parser("fit", help="fit a population model described by a TOML config (see fits/*/config.toml)")
    p.add_argument("config", help="config.toml, or the folder holding it")
    p.add_argument("--chains", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--draws", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--method", choices=["nuts", "laplace"])
    p.add_argument("--devices", help='split the subjects over "all" JAX devices or the first N (overrides '
                   "[fit] devices; the subject count must be a multiple of it)")
    p.add_argument("--out", help="output folder (default: outputs/ next to the config)")
    p.add_argument("--no-report", action="store_true", help="skip the diagnostics report")
    p.add_argument("--continue", dest="resume", action="store_true",
                   help="run the fit saved in the output folder (a stopped one: [fit] checkpoint_every, or a "
                        "finished one) on to [fit] draws (or --draws) per chain, without a new warmup")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("report", help="write diagnostics (PNG, CSV, summary.md) for a saved fit")
    p.add_argument("fit_dir", help="the folder of a fit (holding fit.nc), or the fit.nc file")
    p.set_defaults(func=cmd_report, chains=1)

    # importing these does not start JAX's backend, so _host_devices below still applies
    from ._optimise import add_dose_parser
    from ._trial import add_simulate_parser

    add_simulate_parser(sub)
    add_dose_parser(sub)

    args = parser.parse_args(argv)
    _host_devices(max(getattr(args, "chains", None) or 4, 1))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
