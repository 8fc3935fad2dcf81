"""Outside systems, as plain functions over frozen dataclasses (no Django models here).

- `repository`: repository references and git remotes, checked before any network use;
- `change_set`: the files of one commit, with their paths checked;
- `github`: GitHub through PyGithub (context, branches, commits, pull requests);
- `git`: a plain git remote (push a change set) and patches;
- `detection`: languages and frameworks from paths and manifests;
- `secrets`: tokens with blind reprs, and scrubbing them out of text.
"""
