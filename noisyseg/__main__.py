from noisyseg.train import main

main()
