"""Merge a LoRA adapter into its base model: `python scripts/merge_lora.py OUTPUT_DIR MERGED_DIR`."""

import sys

from alignment.tools.merge import merge_main

if __name__ == "__main__":
    sys.exit(merge_main(sys.argv[1:]))
