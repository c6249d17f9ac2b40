from noisyseg.bench.cli import main

main()
