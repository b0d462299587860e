"""The command line: a click group whose commands come from the registry (:mod:`.main`),
and the learned-filter commands ``train`` and ``info`` (:mod:`.learn`)."""
