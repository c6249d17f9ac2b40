from noisyseg.noise.preview import main

main()
