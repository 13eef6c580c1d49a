"""A plugin that cannot be imported (a dependency it needs is missing): robustsig must keep running."""

raise ImportError("robustsig_broken needs the package 'not-installed-anywhere'")
