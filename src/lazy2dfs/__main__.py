import sys

from lazy2dfs.cli import main

sys.exit(main())
