#!/usr/bin/env python
"""Merges the shard files of one proposal job (tools/generate_proposals.py --shard i/n) into one file.

Example:
    python tools/merge_proposals.py part*.pkl --output proposals.pkl [--soco-json proposals.json]
"""
import argparse
import sys

import objpretrain  # noqa: F401
from objpretrain.data.proposals import export_soco_json, format_summary, load_proposal_file, merge_proposal_files


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", nargs="+", help="the n shard files, in any order")
    parser.add_argument("--output", required=True, help="merged Detectron2 proposal pickle")
    parser.add_argument("--soco-json", help="also write the merged proposals as an official SoCo JSON")
    args = parser.parse_args(argv)
    metadata = merge_proposal_files(args.shards, args.output)
    if args.soco_json:
        export_soco_json(load_proposal_file(args.output), args.soco_json)
    print(format_summary(metadata["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
