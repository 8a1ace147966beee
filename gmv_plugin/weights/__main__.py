"""``python -m gmv_plugin.weights status|download|bundle|install|urls``."""

import argparse
import json
import sys


def main(argv=None):
    from gmv_plugin import weights as w
    from gmv_plugin.weights import fetching as dl

    parser = argparse.ArgumentParser(
        prog="python -m gmv_plugin.weights",
        description="GMValuator pretrained weights: status, download, bundle, install.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    models_help = "model names (default: %s)" % " ".join(w.KNOWN_MODELS)
    p = sub.add_parser("status", help="what is present and missing, per file")
    p.add_argument("--models", nargs="+", help=models_help)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("download", help="download missing files (with progress)")
    p.add_argument("--models", nargs="+", help=models_help)
    p = sub.add_parser("bundle", help="write one archive of the files, for offline machines")
    p.add_argument("--to", required=True, help="the archive (.tar) to write")
    p.add_argument("--models", nargs="+", help=models_help)
    p = sub.add_parser("install", help="install an archive made by `bundle`")
    p.add_argument("file")
    p = sub.add_parser("urls", help="source URLs and their place on a mirror")
    p.add_argument("--models", nargs="+", help=models_help)
    args = parser.parse_args(argv)

    try:
        if args.cmd == "status":
            rows = w.status(args.models)
            print(json.dumps(rows, indent=1) if args.json else w.format_status(rows))
            return 0 if all(r["state"] != "missing" for r in rows) else 1
        if args.cmd == "download":
            rows = w.download(args.models, progress=True)
            print(w.format_status(rows))
            return 0
        if args.cmd == "bundle":
            manifest = w.bundle(args.to, args.models)
            size = sum(f["size"] for f in manifest["files"])
            print("Wrote %s: %d files, %d bytes, models %s"
                  % (args.to, len(manifest["files"]), size, ", ".join(manifest["models"])))
            return 0
        if args.cmd == "install":
            for path in w.install(args.file):
                print("installed %s" % path)
            return 0
        if args.cmd == "urls":
            for m in [w.get_model(n) for n in (args.models or w.KNOWN_MODELS)]:
                for s in m.sources:
                    print("%s\t%s\tmirror: <base>/%s" % (m.name, s.url, dl.mirror_path(s.url)))
            return 0
    except (w.MissingWeightsError, w.BundleError, ValueError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
