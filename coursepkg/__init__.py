"""coursepkg: the companion package of the course "From EM to Diffusion".

Every algorithm the book shows lives here, once; the chapters, the solution notebooks and the
graders import the same functions. Modules, one per idea:

- :mod:`coursepkg.config`      device, profile (quick/full), seeding, the notebook ``setup()`` line
- :mod:`coursepkg.probability` chapter 01: log-densities, KL divergences, Monte Carlo, Gaussian identities
- :mod:`coursepkg.gmm`         chapter 02: Gaussian mixtures, the E and M steps, EM (faster than scikit-learn)
- :mod:`coursepkg.elbo`        chapter 03: ELBO and IWAE estimators, an exact linear-Gaussian model, amortized inference
- :mod:`coursepkg.data`        the data sets the chapters use (offline, generated or shipped)
- :mod:`coursepkg.grading`     ``check(exercise_id, answer)`` and the registry of exercise checks
- :mod:`coursepkg.notebooks`   the exercise generator and the notebook install cell
- :mod:`coursepkg.batch`       batch grading of a folder of submissions into a CSV
"""

__version__ = "0.1.0"
