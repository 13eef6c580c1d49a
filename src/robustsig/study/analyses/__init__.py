"""The built-in analyses of a study, one module (or small package) each: its options, its result tables, its plan
and its report section (the contract: :mod:`robustsig.study.analysis`). :mod:`robustsig.study.registry` lists them in
order, with those installed packages add."""
